package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// GenerateKeySet returns the JSON of a private JWK set, {"keys": [...]}, holding
// one new Ed25519 signing key whose kid is its RFC 7638 thumbprint. The output
// is what the file named by PARLEY_JWT_KEYS holds; to rotate, put a new key
// first and keep the old ones after it until their tokens have expired.
func GenerateKeySet() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	key, err := jwk.FromRaw(priv)
	if err != nil {
		return nil, fmt.Errorf("build jwk: %w", err)
	}
	if err := key.Set(jwk.AlgorithmKey, jwa.EdDSA); err != nil {
		return nil, fmt.Errorf("set alg: %w", err)
	}
	if err := key.Set(jwk.KeyUsageKey, jwk.ForSignature); err != nil {
		return nil, fmt.Errorf("set use: %w", err)
	}
	if err := jwk.AssignKeyID(key); err != nil {
		return nil, fmt.Errorf("assign kid: %w", err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(key); err != nil {
		return nil, fmt.Errorf("add key: %w", err)
	}
	out, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal jwk set: %w", err)
	}
	return append(out, '\n'), nil
}

// WriteKeySet writes a new private JWK set (GenerateKeySet) to the file at
// path, mode 0600; with keep, a file already there is left alone.
func WriteKeySet(path string, keep bool) error {
	if keep {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
	}
	set, err := GenerateKeySet()
	if err != nil {
		return err
	}
	return os.WriteFile(path, set, 0o600)
}

// ReadKeySet reads the private JWK set in the file at path and checks it as
// ParseKeySet does.
func ReadKeySet(path string) (jwk.Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return ParseKeySet(data)
}

// ParseKeySet parses and checks a private JWK set for a Manager. Every key must
// be a private Ed25519 (OKP) or P-256 (EC) key meant for signatures; a key
// without a kid gets its RFC 7638 thumbprint and a key without an alg gets the
// one algorithm allowed for its type (EdDSA or ES256). Public-only, symmetric
// and RSA keys, duplicate kids and an alg that does not fit the key are errors.
func ParseKeySet(data []byte) (jwk.Set, error) {
	set, err := jwk.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parse jwk set: %w", err)
	}
	if set.Len() == 0 {
		return nil, errors.New("jwk set has no keys")
	}
	for i := range set.Len() {
		key, _ := set.Key(i)
		// Before the thumbprint: jwx panics taking one of an EC point
		// whose coordinates are longer than its curve's.
		if err := key.Validate(); err != nil {
			return nil, fmt.Errorf("key #%d: invalid: %w", i, err)
		}
		if key.KeyID() == "" {
			if err := jwk.AssignKeyID(key); err != nil {
				return nil, fmt.Errorf("key #%d: assign kid: %w", i, err)
			}
		}
		alg, err := signingAlgorithm(key)
		if err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): %w", i, key.KeyID(), err)
		}
		if key.Algorithm().String() == "" {
			if err := key.Set(jwk.AlgorithmKey, alg); err != nil {
				return nil, fmt.Errorf("key #%d (kid %q): set alg: %w", i, key.KeyID(), err)
			}
		}
	}
	if _, err := loadKeys(set); err != nil {
		return nil, err
	}
	return set, nil
}

// signingAlgorithm returns the one algorithm a key may sign with, pinned by its
// type and curve, or why the key may not be used at all.
func signingAlgorithm(key jwk.Key) (jwa.SignatureAlgorithm, error) {
	var alg jwa.SignatureAlgorithm
	switch k := key.(type) {
	case jwk.OKPPrivateKey:
		if k.Crv() != jwa.Ed25519 {
			return "", fmt.Errorf("OKP curve %q is not supported (want Ed25519)", k.Crv())
		}
		alg = jwa.EdDSA
	case jwk.ECDSAPrivateKey:
		if k.Crv() != jwa.P256 {
			return "", fmt.Errorf("EC curve %q is not supported (want P-256)", k.Crv())
		}
		alg = jwa.ES256
	case jwk.OKPPublicKey, jwk.ECDSAPublicKey, jwk.RSAPublicKey:
		return "", errors.New("key is public only; the set must hold private keys")
	case jwk.SymmetricKey:
		return "", errors.New("symmetric (oct) keys are not allowed; use Ed25519 or P-256")
	default:
		return "", fmt.Errorf("key type %q is not supported; use Ed25519 or P-256", key.KeyType())
	}
	if a := key.Algorithm().String(); a != "" && a != alg.String() {
		return "", fmt.Errorf("alg %q does not fit the key (want %s)", a, alg)
	}
	if use := key.KeyUsage(); use != "" && use != jwk.ForSignature.String() {
		return "", fmt.Errorf("use %q is not %q", use, jwk.ForSignature)
	}
	if ops := key.KeyOps(); ops != nil && !slices.Contains(ops, jwk.KeyOpSign) {
		return "", errors.New(`key_ops does not include "sign"`)
	}
	return alg, nil
}

// signingKey is a key from the set, unpacked once so that neither Issue nor
// Verify touches jwk.Key on the hot path.
type signingKey struct {
	kid  string
	alg  jwa.SignatureAlgorithm
	priv any // ed25519.PrivateKey or *ecdsa.PrivateKey
	pub  any // ed25519.PublicKey or *ecdsa.PublicKey
}

// loadKeys checks every key of set without changing it and unpacks the raw
// keys. Each key signs a probe that its public half must verify, so a set whose
// public coordinates do not belong to its private scalar fails here rather
// than by refusing every token later.
func loadKeys(set jwk.Set) ([]signingKey, error) {
	if set == nil || set.Len() == 0 {
		return nil, errors.New("jwk set has no keys")
	}
	keys := make([]signingKey, 0, set.Len())
	seen := make(map[string]bool, set.Len())
	for i := range set.Len() {
		key, _ := set.Key(i)
		kid := key.KeyID()
		if kid == "" {
			return nil, fmt.Errorf("key #%d has no kid (load sets with ParseKeySet)", i)
		}
		if seen[kid] {
			return nil, fmt.Errorf("key #%d: duplicate kid %q", i, kid)
		}
		seen[kid] = true
		alg, err := signingAlgorithm(key)
		if err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): %w", i, kid, err)
		}
		if err := key.Validate(); err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): invalid: %w", i, kid, err)
		}
		var priv any
		if err := key.Raw(&priv); err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): invalid private key: %w", i, kid, err)
		}
		pub, err := jwk.PublicRawKeyOf(key)
		if err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): invalid public key: %w", i, kid, err)
		}
		if !rawKeyFits(alg, priv, pub) {
			return nil, fmt.Errorf("key #%d (kid %q): unexpected raw key types", i, kid)
		}
		probe := []byte("parley key probe")
		sig, err := jws.Sign(probe, jws.WithKey(alg, priv))
		if err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): cannot sign: %w", i, kid, err)
		}
		if _, err := jws.Verify(sig, jws.WithKey(alg, pub)); err != nil {
			return nil, fmt.Errorf("key #%d (kid %q): public part does not match private part", i, kid)
		}
		keys = append(keys, signingKey{kid: kid, alg: alg, priv: priv, pub: pub})
	}
	return keys, nil
}

// rawKeyFits reports whether jwx unpacked the key into the Go types the pinned
// algorithm expects; anything else would be a library surprise worth refusing.
func rawKeyFits(alg jwa.SignatureAlgorithm, priv, pub any) bool {
	switch alg {
	case jwa.EdDSA:
		_, ok1 := priv.(ed25519.PrivateKey)
		_, ok2 := pub.(ed25519.PublicKey)
		return ok1 && ok2
	case jwa.ES256:
		_, ok1 := priv.(*ecdsa.PrivateKey)
		_, ok2 := pub.(*ecdsa.PublicKey)
		return ok1 && ok2
	default:
		return false
	}
}
