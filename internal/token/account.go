package token

import (
	"time"

	"github.com/google/uuid"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
)

var _ account.Tokens = (*Manager)(nil)

// IssueAccess is IssueInFamily in account's terms, so that a Manager is
// account.Tokens.
func (m *Manager) IssueAccess(sub uuid.UUID, kind auth.Kind, family uuid.UUID, ttl time.Duration) (account.AccessToken, error) {
	is, err := m.IssueInFamily(sub, kind, family, ttl)
	if err != nil {
		return account.AccessToken{}, err
	}
	return account.AccessToken{Token: is.Token, ID: is.ID, IssuedAt: is.IssuedAt, ExpiresAt: is.ExpiresAt}, nil
}
