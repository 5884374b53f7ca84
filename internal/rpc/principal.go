package rpc

import (
	"context"

	"github.com/parley-dev/parley/internal/auth"
)

// principal returns the caller set by the authentication interceptor. Every
// RPC but the public ones runs behind it, so a missing principal means the
// procedure was wrongly listed as public: refuse rather than guess.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, auth.ErrUnauthenticated
	}
	return p, nil
}
