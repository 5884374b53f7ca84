// Package migrations embeds Parley's SQL migrations. Files are named
// YYYYMMDDHHMMSS_name.up.sql and applied in name order by postgres.Migrate.
// Changes are expand/contract only, so old and new replicas can run side by side.
package migrations

import "embed"

// FS holds every *.sql file of this directory.
//
//go:embed *.sql
var FS embed.FS
