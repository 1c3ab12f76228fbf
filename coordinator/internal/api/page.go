package api

import (
	"encoding/base64"
	"sort"

	"google.golang.org/protobuf/proto"
)

// Page sizes of every List.
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

type namedResource interface{ GetName() string }

// paginate returns the page of items (sorted by name) after pageToken and
// the token of the next page, "" on the last one. A token is the base64 of
// the last name served, so pages stay stable while resources come and go.
func paginate[T namedResource](items []T, pageSize int32, pageToken string) ([]T, string, error) {
	if pageSize < 0 {
		return nil, "", invalid("page_size", "must not be negative, got %d", pageSize)
	}
	size := int(pageSize)
	if size == 0 {
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	start := 0
	if pageToken != "" {
		last, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || len(last) == 0 {
			return nil, "", invalid("page_token", "not a token this API returned; start again without one")
		}
		start = sort.Search(len(items), func(i int) bool { return items[i].GetName() > string(last) })
	}
	end := min(start+size, len(items))
	page := items[start:end]
	for _, v := range page {
		if m, ok := any(v).(proto.Message); ok {
			withETag(m)
		}
	}
	next := ""
	if end < len(items) {
		next = base64.RawURLEncoding.EncodeToString([]byte(page[len(page)-1].GetName()))
	}
	return page, next, nil
}
