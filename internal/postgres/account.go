package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/parley-dev/parley/internal/account"
	"github.com/parley-dev/parley/internal/auth"
)

// AccountStore keeps users, refresh tokens, agent keys and access-token
// revocations. It implements account.Store, and revocation.Source for the
// Valkey cache's fallback.
type AccountStore struct {
	db *bun.DB
}

var _ account.Store = (*AccountStore)(nil)

// NewAccountStore returns an AccountStore over db.
func NewAccountStore(db *bun.DB) *AccountStore {
	return &AccountStore{db: db}
}

type userRow struct {
	bun.BaseModel `bun:"table:users"`

	ID           uuid.UUID `bun:"id,pk,type:uuid"`
	Email        string    `bun:"email"`
	DisplayName  string    `bun:"display_name"`
	PasswordHash string    `bun:"password_hash"`
	CreatedAt    time.Time `bun:"created_at,nullzero,notnull,default:now()"`
	UpdatedAt    time.Time `bun:"updated_at,nullzero,notnull,default:now()"`
}

func (r userRow) user() account.User {
	return account.User{ID: r.ID, Email: r.Email, DisplayName: r.DisplayName, CreatedAt: r.CreatedAt}
}

type refreshFamilyRow struct {
	bun.BaseModel `bun:"table:refresh_families"`

	ID              uuid.UUID `bun:"id,pk,type:uuid"`
	UserID          uuid.UUID `bun:"user_id,type:uuid"`
	CreatedAt       time.Time `bun:"created_at,nullzero,notnull,default:now()"`
	RevokedAt       time.Time `bun:"revoked_at,nullzero"`
	AccessExpiresAt time.Time `bun:"access_expires_at,nullzero"`
}

type refreshTokenRow struct {
	bun.BaseModel `bun:"table:refresh_tokens"`

	ID        uuid.UUID `bun:"id,pk,type:uuid"`
	TokenHash []byte    `bun:"token_hash"`
	FamilyID  uuid.UUID `bun:"family_id,type:uuid"`
	ParentID  uuid.UUID `bun:"parent_id,type:uuid,nullzero"`
	CreatedAt time.Time `bun:"created_at,nullzero,notnull,default:now()"`
	ExpiresAt time.Time `bun:"expires_at"`
	SpentAt   time.Time `bun:"spent_at,nullzero"`
}

type agentKeyRow struct {
	bun.BaseModel `bun:"table:agent_keys"`

	ID        uuid.UUID `bun:"id,pk,type:uuid"`
	Name      string    `bun:"name"`
	KeyHash   []byte    `bun:"key_hash"`
	CreatedAt time.Time `bun:"created_at,nullzero,notnull,default:now()"`
	RevokedAt time.Time `bun:"revoked_at,nullzero"`
}

func (r agentKeyRow) agentKey() account.AgentKey {
	return account.AgentKey{ID: r.ID, Name: r.Name, CreatedAt: r.CreatedAt, RevokedAt: r.RevokedAt}
}

type revokedTokenRow struct {
	bun.BaseModel `bun:"table:revoked_tokens"`

	JTI       string    `bun:"jti,pk"`
	ExpiresAt time.Time `bun:"expires_at"`
}

type revokedFamilyRow struct {
	bun.BaseModel `bun:"table:revoked_families"`

	FamilyID  uuid.UUID `bun:"family_id,pk,type:uuid"`
	ExpiresAt time.Time `bun:"expires_at"`
}

// CreateUser implements account.Store.
func (s *AccountStore) CreateUser(ctx context.Context, u account.User, passwordHash string) (_ account.User, err error) {
	defer markUnavailable(&err)
	row := userRow{ID: u.ID, Email: u.Email, DisplayName: u.DisplayName, PasswordHash: passwordHash}
	_, err = s.db.NewInsert().Model(&row).Returning("created_at, updated_at").Exec(ctx)
	if isUniqueViolation(err, "users_email_key") {
		return account.User{}, account.ErrEmailTaken
	}
	if err != nil {
		return account.User{}, fmt.Errorf("insert user: %w", err)
	}
	return row.user(), nil
}

// UserByEmail implements account.Store.
func (s *AccountStore) UserByEmail(ctx context.Context, email string) (_ account.User, _ string, err error) {
	defer markUnavailable(&err)
	var row userRow
	err = s.db.NewSelect().Model(&row).Where("email = ?", email).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return account.User{}, "", account.ErrUserNotFound
	}
	if err != nil {
		return account.User{}, "", fmt.Errorf("select user by email: %w", err)
	}
	return row.user(), row.PasswordHash, nil
}

// User implements account.Store.
func (s *AccountStore) User(ctx context.Context, id uuid.UUID) (_ account.User, err error) {
	defer markUnavailable(&err)
	var row userRow
	err = s.db.NewSelect().Model(&row).Where("id = ?", id).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return account.User{}, account.ErrUserNotFound
	}
	if err != nil {
		return account.User{}, fmt.Errorf("select user: %w", err)
	}
	return row.user(), nil
}

// UpdateDisplayName implements account.Store.
func (s *AccountStore) UpdateDisplayName(ctx context.Context, id uuid.UUID, displayName string, now time.Time) (_ account.User, err error) {
	defer markUnavailable(&err)
	var row userRow
	err = s.db.NewUpdate().Model(&row).
		Set("display_name = ?", displayName).
		Set("updated_at = ?", now).
		Where("id = ?", id).
		Returning("*").
		Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return account.User{}, account.ErrUserNotFound
	}
	if err != nil {
		return account.User{}, fmt.Errorf("update user: %w", err)
	}
	return row.user(), nil
}

// CreateRefreshToken implements account.Store.
func (s *AccountStore) CreateRefreshToken(ctx context.Context, t account.RefreshToken) (err error) {
	defer markUnavailable(&err)
	return inTx(ctx, s.db, "create refresh token", func(ctx context.Context, tx bun.Tx) error {
		family := refreshFamilyRow{ID: t.FamilyID, UserID: t.UserID, AccessExpiresAt: t.AccessExpiresAt}
		if _, err := tx.NewInsert().Model(&family).Exec(ctx); err != nil {
			if isForeignKeyViolation(err) {
				return account.ErrUserNotFound
			}
			return fmt.Errorf("insert refresh family: %w", err)
		}
		row := refreshTokenRow{ID: t.ID, TokenHash: t.Hash, FamilyID: t.FamilyID, ExpiresAt: t.ExpiresAt}
		if _, err := tx.NewInsert().Model(&row).Exec(ctx); err != nil {
			return fmt.Errorf("insert refresh token: %w", err)
		}
		return nil
	})
}

// RotateRefreshToken implements account.Store.
func (s *AccountStore) RotateRefreshToken(ctx context.Context, hash []byte, next account.RefreshToken, now time.Time) (_ account.RefreshToken, err error) {
	defer markUnavailable(&err)
	var (
		spent  account.RefreshToken
		reused bool
	)
	err = inTx(ctx, s.db, "rotate refresh token", func(ctx context.Context, tx bun.Tx) error {
		var cur struct {
			ID              uuid.UUID `bun:"id"`
			FamilyID        uuid.UUID `bun:"family_id"`
			UserID          uuid.UUID `bun:"user_id"`
			ExpiresAt       time.Time `bun:"expires_at"`
			SpentAt         time.Time `bun:"spent_at,nullzero"`
			FamilyRevokedAt time.Time `bun:"family_revoked_at,nullzero"`
			AccessExpiresAt time.Time `bun:"access_expires_at,nullzero"`
		}
		// Locking the token row serialises concurrent rotations of the same
		// token: the second waits, then reads the spent_at the first wrote.
		// Locking the family too orders a reuse after any rotation in the
		// family that began first, so its revocation outlasts every access
		// token that rotation issued.
		err := tx.NewRaw(`
			SELECT t.id, t.family_id, f.user_id, t.expires_at, t.spent_at, f.revoked_at AS family_revoked_at,
				f.access_expires_at
			FROM refresh_tokens AS t
			JOIN refresh_families AS f ON f.id = t.family_id
			WHERE t.token_hash = ?
			FOR UPDATE OF t, f`, hash).Scan(ctx, &cur)
		if errors.Is(err, sql.ErrNoRows) {
			return auth.ErrUnauthenticated
		}
		if err != nil {
			return fmt.Errorf("select refresh token: %w", err)
		}
		spent = account.RefreshToken{
			ID: cur.ID, Hash: hash, UserID: cur.UserID, FamilyID: cur.FamilyID,
			ExpiresAt: cur.ExpiresAt, AccessExpiresAt: cur.AccessExpiresAt,
		}
		if !cur.ExpiresAt.After(now) {
			return auth.ErrUnauthenticated
		}
		if !cur.SpentAt.IsZero() || !cur.FamilyRevokedAt.IsZero() {
			// Committed although the call fails: that is the point.
			reused = true
			_, err := tx.NewUpdate().Model((*refreshFamilyRow)(nil)).
				Set("revoked_at = coalesce(revoked_at, ?)", now).
				Where("id = ?", cur.FamilyID).
				Exec(ctx)
			if err != nil {
				return fmt.Errorf("revoke refresh family: %w", err)
			}
			rf, err := revokeFamilyAccess(ctx, tx, cur.FamilyID, cur.AccessExpiresAt, now)
			if err != nil {
				return err
			}
			spent.AccessExpiresAt = rf.ExpiresAt
			return nil
		}
		_, err = tx.NewUpdate().Model((*refreshTokenRow)(nil)).
			Set("spent_at = ?", now).
			Where("id = ?", cur.ID).
			Exec(ctx)
		if err != nil {
			return fmt.Errorf("spend refresh token: %w", err)
		}
		child := refreshTokenRow{
			ID:        next.ID,
			TokenHash: next.Hash,
			FamilyID:  cur.FamilyID,
			ParentID:  cur.ID,
			ExpiresAt: next.ExpiresAt,
		}
		if _, err := tx.NewInsert().Model(&child).Exec(ctx); err != nil {
			return fmt.Errorf("insert refresh token: %w", err)
		}
		_, err = tx.NewUpdate().Model((*refreshFamilyRow)(nil)).
			Set("access_expires_at = greatest(access_expires_at, ?)", next.AccessExpiresAt).
			Where("id = ?", cur.FamilyID).
			Exec(ctx)
		if err != nil {
			return fmt.Errorf("update refresh family: %w", err)
		}
		return nil
	})
	if err != nil {
		return account.RefreshToken{}, err
	}
	if reused {
		return spent, account.ErrRefreshTokenReused
	}
	return spent, nil
}

// RevokeRefreshFamily implements account.Store.
func (s *AccountStore) RevokeRefreshFamily(ctx context.Context, hash []byte, userID uuid.UUID, now time.Time) (_ account.RevokedFamily, _ bool, err error) {
	defer markUnavailable(&err)
	var (
		rf account.RevokedFamily
		ok bool
	)
	err = inTx(ctx, s.db, "revoke refresh family", func(ctx context.Context, tx bun.Tx) error {
		var f refreshFamilyRow
		err := tx.NewRaw(`
			UPDATE refresh_families AS f
			SET revoked_at = coalesce(f.revoked_at, ?)
			FROM refresh_tokens AS t
			WHERE t.token_hash = ? AND t.family_id = f.id AND f.user_id = ?
			RETURNING f.id, f.access_expires_at`,
			now, hash, userID).Scan(ctx, &f)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("revoke refresh family: %w", err)
		}
		ok = true
		rf, err = revokeFamilyAccess(ctx, tx, f.ID, f.AccessExpiresAt, now)
		return err
	})
	if err != nil {
		return account.RevokedFamily{}, false, err
	}
	return rf, ok, nil
}

// revokeFamilyAccess records that the family's access tokens are revoked
// until accessExpiresAt, or until now when no access token of the family
// was recorded (a replica of an earlier release issued them, without the
// family in them). A family revoked twice keeps the later expiry.
func revokeFamilyAccess(ctx context.Context, tx bun.Tx, family uuid.UUID, accessExpiresAt, now time.Time) (account.RevokedFamily, error) {
	if accessExpiresAt.IsZero() {
		accessExpiresAt = now
	}
	var exp time.Time
	err := tx.NewRaw(`
		INSERT INTO revoked_families AS r (family_id, expires_at) VALUES (?, ?)
		ON CONFLICT (family_id) DO UPDATE SET expires_at = greatest(r.expires_at, EXCLUDED.expires_at)
		RETURNING expires_at`,
		family, accessExpiresAt).Scan(ctx, &exp)
	if err != nil {
		return account.RevokedFamily{}, fmt.Errorf("insert revoked family: %w", err)
	}
	return account.RevokedFamily{ID: family, ExpiresAt: exp}, nil
}

// CreateAgentKey implements account.Store.
func (s *AccountStore) CreateAgentKey(ctx context.Context, k account.AgentKey, hash []byte) (_ account.AgentKey, err error) {
	defer markUnavailable(&err)
	row := agentKeyRow{ID: k.ID, Name: k.Name, KeyHash: hash}
	if _, err := s.db.NewInsert().Model(&row).Returning("created_at").Exec(ctx); err != nil {
		return account.AgentKey{}, fmt.Errorf("insert agent key: %w", err)
	}
	return row.agentKey(), nil
}

// AgentKeyByHash implements account.Store.
func (s *AccountStore) AgentKeyByHash(ctx context.Context, hash []byte) (_ account.AgentKey, err error) {
	defer markUnavailable(&err)
	var row agentKeyRow
	err = s.db.NewSelect().Model(&row).Where("key_hash = ?", hash).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return account.AgentKey{}, auth.ErrUnauthenticated
	}
	if err != nil {
		return account.AgentKey{}, fmt.Errorf("select agent key: %w", err)
	}
	return row.agentKey(), nil
}

// RevokeAgentKey implements account.Store.
func (s *AccountStore) RevokeAgentKey(ctx context.Context, id uuid.UUID, now time.Time) (err error) {
	defer markUnavailable(&err)
	res, err := s.db.NewUpdate().Model((*agentKeyRow)(nil)).
		Set("revoked_at = coalesce(revoked_at, ?)", now).
		Where("id = ?", id).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("revoke agent key: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("revoke agent key: %w", err)
	} else if n == 0 {
		return account.ErrAgentKeyNotFound
	}
	return nil
}

// RevokeAccessToken implements account.Store.
func (s *AccountStore) RevokeAccessToken(ctx context.Context, t account.RevokedToken) (err error) {
	defer markUnavailable(&err)
	row := revokedTokenRow{JTI: t.ID, ExpiresAt: t.ExpiresAt}
	if _, err := s.db.NewInsert().Model(&row).On("CONFLICT (jti) DO NOTHING").Exec(ctx); err != nil {
		return fmt.Errorf("insert revoked token: %w", err)
	}
	return nil
}

// IsAccessTokenRevoked implements account.Store and revocation.Source, in
// one query.
func (s *AccountStore) IsAccessTokenRevoked(ctx context.Context, jti string, family uuid.UUID) (_ bool, err error) {
	defer markUnavailable(&err)
	if family == uuid.Nil {
		ok, err := s.db.NewSelect().Model((*revokedTokenRow)(nil)).Where("jti = ?", jti).Exists(ctx)
		if err != nil {
			return false, fmt.Errorf("select revoked token: %w", err)
		}
		return ok, nil
	}
	var ok bool
	err = s.db.NewRaw(`
		SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?)
			OR EXISTS (SELECT 1 FROM revoked_families WHERE family_id = ?)`,
		jti, family).Scan(ctx, &ok)
	if err != nil {
		return false, fmt.Errorf("select revoked token: %w", err)
	}
	return ok, nil
}

// RevokedAccessTokens implements account.Store and revocation.Source.
func (s *AccountStore) RevokedAccessTokens(ctx context.Context, now time.Time) (_ []account.RevokedToken, err error) {
	defer markUnavailable(&err)
	var rows []revokedTokenRow
	if err := s.db.NewSelect().Model(&rows).Where("expires_at > ?", now).Scan(ctx); err != nil {
		return nil, fmt.Errorf("select revoked tokens: %w", err)
	}
	out := make([]account.RevokedToken, len(rows))
	for i, r := range rows {
		out[i] = account.RevokedToken{ID: r.JTI, ExpiresAt: r.ExpiresAt}
	}
	return out, nil
}

// RevokedFamilies implements account.Store and revocation.Source.
func (s *AccountStore) RevokedFamilies(ctx context.Context, now time.Time) (_ []account.RevokedFamily, err error) {
	defer markUnavailable(&err)
	var rows []revokedFamilyRow
	if err := s.db.NewSelect().Model(&rows).Where("expires_at > ?", now).Scan(ctx); err != nil {
		return nil, fmt.Errorf("select revoked families: %w", err)
	}
	out := make([]account.RevokedFamily, len(rows))
	for i, r := range rows {
		out[i] = account.RevokedFamily{ID: r.FamilyID, ExpiresAt: r.ExpiresAt}
	}
	return out, nil
}

// PruneBatch bounds the rows one pruning statement deletes, so that a
// backlog is worked off in short statements, none of which holds many row
// locks for long.
const PruneBatch = 500

// PruneRevokedAccessTokens implements account.Store.
func (s *AccountStore) PruneRevokedAccessTokens(ctx context.Context, before time.Time) (_ int64, err error) {
	defer markUnavailable(&err)
	return s.pruneRevocations(ctx, "revoked_tokens", "jti", before)
}

// PruneRevokedFamilies implements account.Store.
func (s *AccountStore) PruneRevokedFamilies(ctx context.Context, before time.Time) (_ int64, err error) {
	defer markUnavailable(&err)
	return s.pruneRevocations(ctx, "revoked_families", "family_id", before)
}

// pruneRevocations deletes the rows of a revocation table (keyed by key)
// that expired before the time, in batches.
func (s *AccountStore) pruneRevocations(ctx context.Context, table, key string, before time.Time) (int64, error) {
	return pruneInBatches(func() (int64, error) {
		res, err := s.db.NewRaw(`
			DELETE FROM ? WHERE ? IN (
				SELECT ? FROM ? WHERE expires_at < ? LIMIT ? FOR UPDATE SKIP LOCKED)`,
			bun.Ident(table), bun.Ident(key), bun.Ident(key), bun.Ident(table), before, PruneBatch).Exec(ctx)
		if err != nil {
			return 0, fmt.Errorf("delete from %s: %w", table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("delete from %s: %w", table, err)
		}
		return n, nil
	})
}

// PruneRefreshTokens implements account.Store. Each batch deletes tokens
// and then, in the same transaction, the families they came from that have
// no token left, so no family is ever left behind empty.
func (s *AccountStore) PruneRefreshTokens(ctx context.Context, before time.Time) (_ int64, err error) {
	defer markUnavailable(&err)
	return pruneInBatches(func() (int64, error) {
		var families []uuid.UUID
		err := inTx(ctx, s.db, "prune refresh tokens", func(ctx context.Context, tx bun.Tx) error {
			// SKIP LOCKED leaves a token that a rotation holds to the next
			// run, rather than waiting for it.
			err := tx.NewRaw(`
				DELETE FROM refresh_tokens WHERE id IN (
					SELECT id FROM refresh_tokens WHERE expires_at < ? LIMIT ? FOR UPDATE SKIP LOCKED)
				RETURNING family_id`,
				before, PruneBatch).Scan(ctx, &families)
			if err != nil {
				return fmt.Errorf("delete refresh tokens: %w", err)
			}
			if len(families) == 0 {
				return nil
			}
			// A family with a token left keeps it: only an expired one can
			// have been deleted, and no rotation adds to a family without a
			// live token.
			_, err = tx.NewRaw(`
				DELETE FROM refresh_families AS f
				WHERE f.id IN (?) AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS t WHERE t.family_id = f.id)`,
				bun.List(families)).Exec(ctx)
			if err != nil {
				return fmt.Errorf("delete refresh families: %w", err)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		return int64(len(families)), nil
	})
}

// pruneInBatches runs batch, which deletes at most PruneBatch rows, until a
// batch deletes fewer, and returns how many rows all of them deleted.
func pruneInBatches(batch func() (int64, error)) (int64, error) {
	var total int64
	for {
		n, err := batch()
		total += n
		if err != nil || n < PruneBatch {
			return total, err
		}
	}
}
