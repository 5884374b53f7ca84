// Package token issues and verifies Parley's access tokens: JWTs signed with an
// asymmetric key from a JWK set. The first key of the set signs and every key
// verifies, so a new key can be put in front and the old one dropped once its
// tokens have expired, without signing anyone out.
//
// Each key is pinned to one algorithm (EdDSA for Ed25519, ES256 for P-256) and
// a token is checked against the key its header names by kid, never against an
// algorithm the token itself chooses.
package token

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/parley-dev/parley/internal/auth"
)

const (
	// RoleClaim is the private claim holding the principal's kind, as written
	// by auth.Kind.String ("user" or "agent").
	RoleClaim = "role"
	// FamilyClaim holds the refresh family (sign-in session) a user's token
	// was issued from, so revoking the family revokes the token. It is the
	// registered "sid" (session id) claim; tokens without it have no family.
	FamilyClaim = "sid"
	// Type is the JOSE "typ" header of access tokens (RFC 9068). Verify requires
	// it, so a JWT of another kind signed with the same keys is not taken for one.
	Type = "at+jwt"
	// DefaultLeeway is a clock skew allowance that suits replicas kept in step by NTP.
	DefaultLeeway = 30 * time.Second

	// maxTokenBytes bounds what Verify will parse; real tokens are ~400 bytes.
	maxTokenBytes = 4096
	maxLeeway     = 5 * time.Minute
)

// Options configures a Manager.
type Options struct {
	// Issuer is the iss claim written into tokens and required on verification.
	Issuer string
	// Audience is the aud claim written into tokens and required on verification.
	Audience string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Leeway is the clock skew tolerated on exp and iat (0 to 5 minutes).
	Leeway time.Duration
}

// Issued is a freshly signed access token.
type Issued struct {
	// Token is the compact JWS to send as "Authorization: Bearer <Token>".
	Token string
	// ID is the token's jti, the handle used to revoke it.
	ID        string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// Manager issues and verifies access tokens. It is safe for concurrent use.
type Manager struct {
	signer    signingKey
	verifiers map[string]signingKey
	issuer    string
	audience  string
	now       func() time.Time
	parseOpts []jwt.ParseOption
	jwks      []byte
	verified  verifiedCache
}

// NewManager returns a Manager that signs with the first key of keys and
// verifies with all of them. keys must hold private keys as checked by
// ParseKeySet; the set is not modified or retained.
func NewManager(keys jwk.Set, opts Options) (*Manager, error) {
	if opts.Issuer == "" {
		return nil, errors.New("token: issuer is required")
	}
	if opts.Audience == "" {
		return nil, errors.New("token: audience is required")
	}
	if opts.Leeway < 0 || opts.Leeway > maxLeeway {
		return nil, fmt.Errorf("token: leeway %s is outside 0..%s", opts.Leeway, maxLeeway)
	}
	loaded, err := loadKeys(keys)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	jwks, err := publicJWKS(keys)
	if err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	m := &Manager{
		signer:    loaded[0],
		verifiers: make(map[string]signingKey, len(loaded)),
		issuer:    opts.Issuer,
		audience:  opts.Audience,
		now:       opts.Now,
		jwks:      jwks,
	}
	if m.now == nil {
		m.now = time.Now
	}
	for _, k := range loaded {
		m.verifiers[k.kid] = k
	}
	// Built once: options are immutable values, so every Verify shares them.
	m.parseOpts = []jwt.ParseOption{
		jwt.WithKeyProvider(keyProvider{keys: m.verifiers}),
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(m.now)),
		jwt.WithAcceptableSkew(opts.Leeway),
		jwt.WithIssuer(m.issuer),
		jwt.WithAudience(m.audience),
		jwt.WithRequiredClaim(jwt.SubjectKey),
		jwt.WithRequiredClaim(jwt.JwtIDKey),
		jwt.WithRequiredClaim(jwt.IssuedAtKey),
		jwt.WithRequiredClaim(jwt.ExpirationKey),
		jwt.WithRequiredClaim(RoleClaim),
	}
	return m, nil
}

// Issue signs a token for subject sub of the given kind, valid for ttl,
// that belongs to no refresh family.
func (m *Manager) Issue(sub uuid.UUID, kind auth.Kind, ttl time.Duration) (Issued, error) {
	return m.IssueInFamily(sub, kind, uuid.Nil, ttl)
}

// IssueInFamily is Issue for a token issued from a refresh family, which it
// names in FamilyClaim. uuid.Nil leaves the claim out.
func (m *Manager) IssueInFamily(sub uuid.UUID, kind auth.Kind, family uuid.UUID, ttl time.Duration) (Issued, error) {
	if sub == uuid.Nil {
		return Issued{}, errors.New("issue token: nil subject")
	}
	if _, ok := auth.ParseKind(kind.String()); !ok {
		return Issued{}, fmt.Errorf("issue token: invalid kind %d", int(kind))
	}
	if ttl < time.Second {
		return Issued{}, fmt.Errorf("issue token: ttl %s is under a second", ttl)
	}
	var idBytes [16]byte
	if _, err := rand.Read(idBytes[:]); err != nil {
		return Issued{}, fmt.Errorf("issue token: jti: %w", err)
	}
	id := base64.RawURLEncoding.EncodeToString(idBytes[:])
	// NumericDate has whole seconds; truncating here makes the returned times
	// equal the ones a verifier reads back.
	iat := m.now().Truncate(time.Second)
	exp := iat.Add(ttl).Truncate(time.Second)

	tok := jwt.New()
	for _, c := range [...]struct {
		name  string
		value any
	}{
		{jwt.IssuerKey, m.issuer},
		{jwt.AudienceKey, m.audience},
		{jwt.SubjectKey, sub.String()},
		{jwt.JwtIDKey, id},
		{jwt.IssuedAtKey, iat},
		{jwt.ExpirationKey, exp},
		{RoleClaim, kind.String()},
	} {
		if err := tok.Set(c.name, c.value); err != nil {
			return Issued{}, fmt.Errorf("issue token: set %s: %w", c.name, err)
		}
	}
	if family != uuid.Nil {
		if err := tok.Set(FamilyClaim, family.String()); err != nil {
			return Issued{}, fmt.Errorf("issue token: set %s: %w", FamilyClaim, err)
		}
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.KeyIDKey, m.signer.kid); err != nil {
		return Issued{}, fmt.Errorf("issue token: set kid: %w", err)
	}
	if err := hdr.Set(jws.TypeKey, Type); err != nil {
		return Issued{}, fmt.Errorf("issue token: set typ: %w", err)
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(m.signer.alg, m.signer.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return Issued{}, fmt.Errorf("issue token: sign: %w", err)
	}
	return Issued{Token: string(signed), ID: id, IssuedAt: iat, ExpiresAt: exp}, nil
}

// Verify checks token's signature, header and claims and returns the principal
// it names. Every failure wraps auth.ErrUnauthenticated; the reason added to it
// is for logs and never holds key material.
func (m *Manager) Verify(token string) (auth.Principal, error) {
	// Only compact serialization is accepted: jwx would also take the JSON
	// forms, which a bearer token never uses.
	if token == "" || len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
		return auth.Principal{}, unauthenticated("malformed token")
	}
	now := m.now()
	if p, ok := m.verified.get(token, now); ok {
		return p, nil
	}
	p, err := m.verify(token)
	if err != nil {
		return auth.Principal{}, err
	}
	m.verified.put(token, p, now)
	return p, nil
}

// verify is Verify without the cache.
func (m *Manager) verify(token string) (auth.Principal, error) {
	if !compact(token) {
		return auth.Principal{}, unauthenticated("malformed token")
	}
	// jwx ignores the spare bits of the signature's last character: set,
	// they spell the same signature another way.
	sig, err := base64.RawURLEncoding.DecodeString(token[strings.LastIndexByte(token, '.')+1:])
	if err != nil {
		return auth.Principal{}, unauthenticated("malformed token")
	}
	if !strings.HasSuffix(token, "."+base64.RawURLEncoding.EncodeToString(sig)) {
		return auth.Principal{}, unauthenticated("invalid signature")
	}
	tok, err := jwt.ParseString(token, m.parseOpts...)
	if err != nil {
		return auth.Principal{}, unauthenticated(failureReason(err))
	}
	sub, err := uuid.Parse(tok.Subject())
	if err != nil || sub == uuid.Nil {
		return auth.Principal{}, unauthenticated("invalid sub claim")
	}
	v, _ := tok.Get(RoleClaim)
	role, _ := v.(string)
	kind, ok := auth.ParseKind(role)
	if !ok {
		return auth.Principal{}, unauthenticated("invalid role claim")
	}
	if tok.JwtID() == "" {
		return auth.Principal{}, unauthenticated("empty jti claim")
	}
	var family uuid.UUID
	if v, ok := tok.Get(FamilyClaim); ok {
		// Only Parley signs these, but a claim that does not name a family
		// would make the token unrevocable by its family: refuse it.
		s, _ := v.(string)
		if family, err = uuid.Parse(s); err != nil || family == uuid.Nil {
			return auth.Principal{}, unauthenticated("invalid sid claim")
		}
	}
	return auth.Principal{ID: sub, Kind: kind, TokenID: tok.JwtID(), FamilyID: family, ExpiresAt: tok.Expiration()}, nil
}

// compact reports whether token holds only base64url and dots: jwx would
// also trim spaces and newlines, accepting other spellings of one token.
func compact(token string) bool {
	for i := range len(token) {
		if c := token[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func unauthenticated(reason string) error {
	return fmt.Errorf("%w: %s", auth.ErrUnauthenticated, reason)
}

// failureReason names why jwx refused a token. Header problems come from
// keyProvider in its own words; signature errors are summarised, since their
// detail is about keys; claim errors from jwx only name the claim.
func failureReason(err error) string {
	var he *headerError
	switch {
	case errors.As(err, &he):
		return he.reason
	case jws.IsVerificationError(err):
		return "invalid signature"
	case jwt.IsValidationError(err):
		return err.Error()
	default:
		return "malformed token"
	}
}

// headerError is a refusal by keyProvider, before any signature is checked.
type headerError struct{ reason string }

func (e *headerError) Error() string { return e.reason }

// keyProvider hands jws.Verify the one raw public key the token's kid names,
// with that key's pinned algorithm, after checking the protected header. The
// header's alg must equal the pinned one: jwx would otherwise verify with the
// key's algorithm and ignore a mismatched header, which is safe but hides a
// forged header from the logs.
type keyProvider struct {
	keys map[string]signingKey
}

func (p keyProvider) FetchKeys(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
	h := sig.ProtectedHeaders()
	kid := h.KeyID()
	if kid == "" {
		return &headerError{"missing kid"}
	}
	key, ok := p.keys[kid]
	if !ok {
		return &headerError{"unknown kid"}
	}
	if h.Algorithm() != key.alg {
		return &headerError{"alg not allowed for key"}
	}
	if typ := strings.TrimPrefix(strings.ToLower(h.Type()), "application/"); typ != Type {
		return &headerError{"wrong typ"}
	}
	if len(h.Critical()) > 0 {
		return &headerError{"unsupported crit header"}
	}
	// b64=false (RFC 7797) changes what is signed; Parley never issues it.
	if _, ok := h.Get("b64"); ok {
		return &headerError{"unsupported b64 header"}
	}
	sink.Key(key.alg, key.pub)
	return nil
}

var _ jws.KeyProvider = keyProvider{}
