package account

import (
	"errors"
	"fmt"

	"github.com/parley-dev/parley/internal/auth"
)

var (
	// ErrEmailTaken is returned by Register when another user already has the
	// email address (compared case-insensitively).
	ErrEmailTaken = errors.New("email address already registered")
	// ErrUserNotFound is returned when the user a token names no longer exists.
	ErrUserNotFound = errors.New("user not found")
	// ErrInvalidDisplayName is returned by UpdateProfile when the display name
	// is blank once trimmed.
	ErrInvalidDisplayName = errors.New("display name must not be blank")
	// ErrInvalidAgentKeyName is returned by CreateAgentKey when the name is
	// blank once trimmed.
	ErrInvalidAgentKeyName = errors.New("agent key name must not be blank")
	// ErrAgentKeyNotFound is returned by RevokeAgentKey for an unknown key id.
	ErrAgentKeyNotFound = errors.New("agent key not found")
	// ErrRefreshTokenReused is returned by Store.RotateRefreshToken when the
	// token was already spent or its family revoked: a sign that it was
	// stolen, so the store has revoked the whole family. It wraps
	// auth.ErrUnauthenticated, which is all that clients are told.
	ErrRefreshTokenReused = fmt.Errorf("refresh token reused: %w", auth.ErrUnauthenticated)
)
