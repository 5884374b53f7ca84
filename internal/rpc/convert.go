package rpc

import (
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/parley-dev/parley/internal/account"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/rule"
)

// timestamp converts t, leaving the zero time unset rather than 1970.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func userToProto(u account.User) *parleyv1.User {
	return &parleyv1.User{
		Id:          u.ID.String(),
		Email:       u.Email,
		DisplayName: u.DisplayName,
		CreatedAt:   timestamp(u.CreatedAt),
	}
}

func tokenPairToProto(p account.TokenPair) *parleyv1.TokenPair {
	return &parleyv1.TokenPair{
		AccessToken:      p.AccessToken,
		RefreshToken:     p.RefreshToken,
		AccessExpiresAt:  timestamp(p.AccessExpiresAt),
		RefreshExpiresAt: timestamp(p.RefreshExpiresAt),
	}
}

// parseUUID parses a UUID request field. The validation interceptor has
// checked the shape already; this guards a handler mounted without it.
func parseUUID(field, s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, rule.Broken(field + " must be a UUID")
	}
	return id, nil
}

// parseOptionalUUID is parseUUID with "" meaning uuid.Nil.
func parseOptionalUUID(field, s string) (uuid.UUID, error) {
	if s == "" {
		return uuid.Nil, nil
	}
	return parseUUID(field, s)
}
