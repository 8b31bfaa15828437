//go:build tools

// Package registry pins the schema registry the tests run (AxonOps Schema Registry, a Go
// implementation of Confluent's Schema Registry REST API). Nothing here is compiled into the
// service: contacts_dev/schema_registry.py builds the command this file imports, at the version
// go.mod names, into the per-user cache.
package registry

import (
	_ "github.com/axonops/axonops-schema-registry/cmd/schema-registry"
)
