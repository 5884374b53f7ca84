package api

import (
	"errors"
	"fmt"

	rpc "connectrpc.com/connect"
)

func parse(s string) error {
	if s == "" {
		return rpc.NewError(rpc.CodeInvalidArgument, errors.New("empty")) // want connect
	}
	return fmt.Errorf("parse %q: %w", s, notFound())
}

var wire = rpc.NewWireError // want connect

func refuse() error {
	// connect here is not the package: a local name shadows nothing the
	// rule looks for.
	connect := struct{ NewError func() error }{NewError: notFound}
	return connect.NewError()
}

func code(err error) rpc.Code { return rpc.CodeOf(err) }
