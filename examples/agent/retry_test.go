package main

import (
	"errors"
	"testing"

	"connectrpc.com/connect"
)

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"unavailable", connect.NewError(connect.CodeUnavailable, errors.New("draining")), true},
		{"deadline", connect.NewError(connect.CodeDeadlineExceeded, errors.New("slow")), true},
		{"stream reset by the balancer", connect.NewError(connect.CodeInternal, errors.New("stream error: stream ID 2743; INTERNAL_ERROR; received from peer")), true},
		{"a real internal error", connect.NewError(connect.CodeInternal, errors.New("internal error")), false},
		{"turn conflict", connect.NewError(connect.CodeAlreadyExists, errors.New("turn exists")), false},
		{"bad input", connect.NewError(connect.CodeInvalidArgument, errors.New("too long")), false},
	} {
		if got := retryable(tc.err); got != tc.want {
			t.Errorf("%s: retryable = %v, want %v", tc.name, got, tc.want)
		}
	}
}
