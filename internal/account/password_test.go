package account

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
)

func TestPasswordHashFormat(t *testing.T) {
	t.Parallel()
	h := newHasher(1)
	encoded, err := h.hash(t.Context(), "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	// RFC 9106's second recommended option, in PHC string format.
	phc := regexp.MustCompile(`^\$argon2id\$v=19\$m=65536,t=3,p=4\$([A-Za-z0-9+/]{22})\$([A-Za-z0-9+/]{43})$`)
	m := phc.FindStringSubmatch(encoded)
	if m == nil {
		t.Fatalf("hash %q is not a PHC argon2id string with the expected parameters", encoded)
	}
	salt, _ := base64.RawStdEncoding.DecodeString(m[1])
	key, _ := base64.RawStdEncoding.DecodeString(m[2])
	if len(salt) != 16 || len(key) != 32 {
		t.Errorf("salt %d bytes, key %d bytes; want 16 and 32", len(salt), len(key))
	}
	if want := argon2.IDKey([]byte("correct horse battery"), salt, 3, 64*1024, 4, 32); string(want) != string(key) {
		t.Error("stored key is not argon2id of the password with the stored salt")
	}

	again, err := h.hash(t.Context(), "correct horse battery")
	if err != nil {
		t.Fatal(err)
	}
	if again == encoded {
		t.Error("two hashes of one password are equal: salt is not random")
	}

	for pw, want := range map[string]bool{"correct horse battery": true, "correct horse batterY": false, "": false} {
		ok, err := h.verify(t.Context(), pw, encoded)
		if err != nil || ok != want {
			t.Errorf("verify(%q) = %v, %v; want %v", pw, ok, err, want)
		}
	}
}

// TestPasswordVerifyUsesStoredParams checks that hashes made with other
// parameters (older or future settings) still verify.
func TestPasswordVerifyUsesStoredParams(t *testing.T) {
	t.Parallel()
	salt := []byte("0123456789abcdef")
	key := argon2.IDKey([]byte("hunter22"), salt, 1, 8*1024, 2, 24)
	encoded := fmt.Sprintf("$argon2id$v=19$m=8192,t=1,p=2$%s$%s",
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
	h := newHasher(1)
	if ok, err := h.verify(t.Context(), "hunter22", encoded); err != nil || !ok {
		t.Errorf("verify with stored params = %v, %v; want true", ok, err)
	}
	if ok, err := h.verify(t.Context(), "hunter23", encoded); err != nil || ok {
		t.Errorf("verify of a wrong password = %v, %v; want false", ok, err)
	}
}

func TestPasswordHashMalformed(t *testing.T) {
	t.Parallel()
	valid := strings.Split(dummyPasswordHash, "$")
	with := func(i int, v string) string {
		parts := append([]string(nil), valid...)
		parts[i] = v
		return strings.Join(parts, "$")
	}
	for _, s := range []string{
		"",
		"plaintext",
		with(1, "argon2i"),
		with(2, "v=16"),
		with(3, "m=65536,t=3"),
		with(3, "m=4194304,t=3,p=4"), // 4 GiB: refused rather than allocated
		with(3, "m=65536,t=0,p=4"),
		with(4, "not base64!"),
		with(5, "c2hvcnQ"),
	} {
		if _, err := parsePasswordHash(s); !errors.Is(err, errBadPasswordHash) {
			t.Errorf("parsePasswordHash(%q): got %v, want errBadPasswordHash", s, err)
		}
	}
	if _, err := parsePasswordHash(dummyPasswordHash); err != nil {
		t.Errorf("dummy hash does not parse: %v", err)
	}
}

// TestHasherBoundsConcurrency checks that a caller waiting for a hashing slot
// gives up with its context instead of piling up 64 MiB allocations.
func TestHasherBoundsConcurrency(t *testing.T) {
	t.Parallel()
	h := newHasher(1)
	if err := h.acquire(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := h.hash(ctx, "password"); !errors.Is(err, context.Canceled) {
		t.Errorf("hash while every slot is taken: got %v, want context.Canceled", err)
	}
	if _, err := h.verify(ctx, "password", dummyPasswordHash); !errors.Is(err, context.Canceled) {
		t.Errorf("verify while every slot is taken: got %v, want context.Canceled", err)
	}
	h.release()
	if _, err := h.verify(t.Context(), "password", dummyPasswordHash); err != nil {
		t.Errorf("verify once a slot is free: %v", err)
	}
}

func TestSecrets(t *testing.T) {
	t.Parallel()
	plain, hash, err := newSecret(agentKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(plain, "pk_agent_") || len(plain) != len("pk_agent_")+43 || len(hash) != 32 {
		t.Errorf("newSecret = %q (%d bytes of hash)", plain, len(hash))
	}
	if got, ok := parseSecret(agentKeyPrefix, plain); !ok || string(got) != string(hash) {
		t.Errorf("parseSecret of a fresh secret = %x, %v; want %x", got, ok, hash)
	}
	for _, s := range []string{"", plain[:len(plain)-1], plain + "A", "prt_" + plain[len("pk_agent_"):], strings.Replace(plain, plain[10:11], "*", 1)} {
		if _, ok := parseSecret(agentKeyPrefix, s); ok {
			t.Errorf("parseSecret(%q) accepted it", s)
		}
	}
}
