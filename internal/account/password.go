package account

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Password hashing is argon2id with the second recommended option of
// RFC 9106 (section 4): t=3 passes over 64 MiB with 4 lanes, a 128-bit salt
// and a 256-bit tag. Hashes are stored as PHC strings, so these parameters
// can change later without invalidating stored hashes.
const (
	argonTime    = 3
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 4
	argonSaltLen = 16
	argonKeyLen  = 32

	// argonMaxMemory bounds the parameters read back from a stored hash, so a
	// corrupt row cannot make one login allocate gigabytes.
	argonMaxMemory = 1024 * 1024 // KiB
	argonMaxTime   = 16
)

// dummyPasswordHash is verified against when a login names an unknown email,
// so that answering costs one argon2id hash either way. Its tag matches no
// password anyone could type.
const dummyPasswordHash = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE"

var b64 = base64.RawStdEncoding

// errBadPasswordHash is returned when a stored hash cannot be parsed.
var errBadPasswordHash = errors.New("malformed password hash")

// hasher runs argon2id with at most a few hashes at a time: each takes
// argonMemory, and a burst of logins must not exhaust the process's memory.
type hasher struct {
	slots chan struct{}
}

func newHasher(concurrency int) *hasher {
	if concurrency < 1 {
		concurrency = 1
	}
	return &hasher{slots: make(chan struct{}, concurrency)}
}

func (h *hasher) acquire(ctx context.Context) error {
	select {
	case h.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *hasher) release() { <-h.slots }

// hash returns the PHC string of an argon2id hash of password with a fresh salt.
func (h *hasher) hash(ctx context.Context, password string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("read salt: %w", err)
	}
	if err := h.acquire(ctx); err != nil {
		return "", err
	}
	defer h.release()
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// verify reports whether password matches the PHC string encoded, using the
// parameters stored in it.
func (h *hasher) verify(ctx context.Context, password, encoded string) (bool, error) {
	p, err := parsePasswordHash(encoded)
	if err != nil {
		return false, err
	}
	if err := h.acquire(ctx); err != nil {
		return false, err
	}
	defer h.release()
	key := argon2.IDKey([]byte(password), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(key, p.key) == 1, nil
}

type passwordHash struct {
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

// parsePasswordHash parses "$argon2id$v=19$m=65536,t=3,p=4$<salt>$<key>".
func parsePasswordHash(s string) (passwordHash, error) {
	var p passwordHash
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return p, errBadPasswordHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return p, errBadPasswordHash
	}
	var threads uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memory, &p.time, &threads); err != nil {
		return p, errBadPasswordHash
	}
	if p.time < 1 || p.time > argonMaxTime || threads < 1 || threads > 255 ||
		p.memory < 8*threads || p.memory > argonMaxMemory {
		return p, errBadPasswordHash
	}
	p.threads = uint8(threads)
	var err error
	if p.salt, err = b64.DecodeString(parts[4]); err != nil || len(p.salt) < 8 {
		return p, errBadPasswordHash
	}
	if p.key, err = b64.DecodeString(parts[5]); err != nil || len(p.key) < 16 || len(p.key) > 64 {
		return p, errBadPasswordHash
	}
	return p, nil
}
