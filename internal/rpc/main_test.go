package rpc

import (
	"testing"

	"github.com/parley-dev/parley/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
