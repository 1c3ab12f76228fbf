package api

import (
	"strconv"
	"strings"

	"github.com/ferry-v2v/ferry/coordinator/internal/validate"
)

// Collections of resource names, as in "migrationJobs/{id}".
const (
	colClusters = validate.Clusters
	colHosts    = validate.Hosts
	colStorages = validate.Storages
	colNetworks = validate.Networks
	colServers  = validate.Servers
	colSources  = validate.Sources
	colCreds    = validate.Credentials
	colJobs     = validate.Jobs
	colMappings = validate.Mappings
)

func collectionOf(name string) string {
	c, _, _ := strings.Cut(name, "/")
	return c
}

// wellFormed says whether name is collection/{id} with a valid id.
func wellFormed(name, collection string) bool { return validate.WellFormed(name, collection) }

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
	validate.Ref(&c.Checker, field, value, collection)
}

// checkOptionalRef is checkRef for a field that may be empty.
func checkOptionalRef(c *checker, field, value, collection string) {
	validate.OptionalRef(&c.Checker, field, value, collection)
}

// checkName checks the name of a Get, Delete or custom verb.
func checkName(value, collection string) error {
	c := &checker{}
	checkRef(c, "name", value, collection)
	return c.err()
}

func checkRequestID(c *checker, id string) { validate.RequestID(&c.Checker, id) }

func itoa(i int) string { return strconv.Itoa(i) }
