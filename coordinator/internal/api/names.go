package api

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/ferry-v2v/ferry/pkg/hostname"
)

// Collections of resource names, as in "migrationJobs/{id}".
const (
	colClusters  = "clusters"
	colHosts     = "hosts"
	colStorages  = "primaryStorages"
	colNetworks  = "l3Networks"
	colServers   = "migrationServers"
	colSources   = "sources"
	colCreds     = "credentials"
	colJobs      = "migrationJobs"
	colMappings  = "networkMappingGroups"
	maxRequestID = 128
)

// idPattern is what a caller may choose as a resource ID.
var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func collectionOf(name string) string {
	c, _, _ := strings.Cut(name, "/")
	return c
}

// wellFormed says whether name is collection/{id} with a valid id.
func wellFormed(name, collection string) bool {
	id, ok := strings.CutPrefix(name, collection+"/")
	if !ok {
		return false
	}
	if collection == colHosts {
		return hostname.Validate(id) == nil
	}
	return idPattern.MatchString(id)
}

// newName returns the name a Create uses: the caller's when given and
// well-formed, else a fresh one. A malformed name is refused rather than
// silently replaced, so the caller never gets a resource under a name it
// did not expect.
func (a *API) newName(c *checker, field, given, collection string) string {
	if given == "" {
		return collection + "/" + a.newID()
	}
	if !wellFormed(given, collection) {
		c.add(field, "%q is not %s/{id} with an id of lower-case letters, digits and '-' (at most 63, starting with a letter or digit); leave it empty to have one made", given, collection)
	}
	return given
}

// checkRef checks that a required reference field is collection/{id}.
func checkRef(c *checker, field, value, collection string) {
	switch {
	case value == "":
		c.add(field, "required: a %s/{id} name", collection)
	case !wellFormed(value, collection):
		c.add(field, "%q is not a %s/{id} name", value, collection)
	}
}

// checkOptionalRef is checkRef for a field that may be empty.
func checkOptionalRef(c *checker, field, value, collection string) {
	if value != "" {
		checkRef(c, field, value, collection)
	}
}

// checkName checks the name of a Get, Delete or custom verb.
func checkName(value, collection string) error {
	c := &checker{}
	checkRef(c, "name", value, collection)
	return c.err()
}

func checkRequestID(c *checker, id string) {
	if len(id) > maxRequestID {
		c.add("request_id", "at most %d characters, got %d", maxRequestID, len(id))
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
