//go:build e2e

// Package e2e drives Parley end to end over real processes: three replicas
// of the built binary on one empty database, with shared Valkey and Azurite
// and a fake LiveKit, behind a round-robin balancer written here. It runs
// only with the e2e build tag (`make e2e`), so `go test ./...` never builds
// or runs the long suite.
package e2e

import (
	"testing"

	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
