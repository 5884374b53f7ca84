package auth

import "github.com/google/uuid"

// UserOnly refuses a principal that is not a signed-in user: an agent with
// ErrPermissionDenied (the call is user-scoped), anything else with
// ErrUnauthenticated.
func UserOnly(p Principal) error {
	switch {
	case p.IsAgent():
		return ErrPermissionDenied
	case !p.IsUser() || p.ID == uuid.Nil:
		return ErrUnauthenticated
	}
	return nil
}
