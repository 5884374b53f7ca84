package rpc

import (
	"errors"
	"log/slog"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
)

// TestHandlerErrorsMapAsBefore pins what clients read of the errors
// handlers make themselves, now that they are domain errors mapped in
// errors.go rather than Connect errors made on the spot.
func TestHandlerErrorsMapAsBefore(t *testing.T) {
	_, uuidErr := parseUUID("room_id", "not-a-uuid")
	_, optionalErr := parseOptionalUUID("room_id", "x")
	_, orderErr := orderFromProto(parleyv1.Order(99))
	_, formatErr := exporterFor(parleyv1.ExportFormat(99))
	for _, tc := range []struct {
		err  error
		code connect.Code
		msg  string
	}{
		{uuidErr, connect.CodeInvalidArgument, "room_id must be a UUID"},
		{optionalErr, connect.CodeInvalidArgument, "room_id must be a UUID"},
		{orderErr, connect.CodeInvalidArgument, "unknown order"},
		{formatErr, connect.CodeInvalidArgument, "unknown export format"},
		{errNoFileStore, connect.CodeUnimplemented, "parley.v1.ConversationService.ExportConversation needs a file store"},
	} {
		if tc.err == nil {
			t.Errorf("no error where %q was expected", tc.msg)
			continue
		}
		var ce *connect.Error
		got := toConnectError(t.Context(), slog.New(slog.DiscardHandler), tc.err)
		if !errors.As(got, &ce) || ce.Code() != tc.code || ce.Message() != tc.msg {
			t.Errorf("toConnectError(%v) = %v, want %v: %s", tc.err, got, tc.code, tc.msg)
		}
	}
}
