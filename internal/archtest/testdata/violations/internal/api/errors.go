// Package api is a transport whose Connect errors should all be made in
// errors.go: the rule tests expect a report on each line marked "want"
// and on no other.
package api

import (
	"errors"

	"connectrpc.com/connect"
)

func notFound() error { return connect.NewError(connect.CodeNotFound, errors.New("not found")) }

func fromWire() error { return connect.NewWireError(connect.CodeUnknown, errors.New("upstream")) }
