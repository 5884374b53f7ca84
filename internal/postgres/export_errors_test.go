package postgres

// The error helpers are unexported; the external tests (which need
// testenv, which imports this package) reach them through these.
var (
	PgCode                = pgCode
	PgConstraint          = pgConstraint
	IsNoRows              = isNoRows
	IsUniqueViolation     = isUniqueViolation
	IsForeignKeyViolation = isForeignKeyViolation
	IsInvalidText         = isInvalidText
	IsRetryable           = isRetryable
	IsUnavailable         = isUnavailable
	MigrateFS             = migrateFS
	MigrationLockKey      = migrationLockKey
	InTx                  = inTx
)

// ClaimWebhookDeliveriesSQL lets a test hold a claim's transaction open.
const ClaimWebhookDeliveriesSQL = claimWebhookDeliveriesSQL
