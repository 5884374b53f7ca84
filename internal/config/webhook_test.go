package config

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestWebhookSettings(t *testing.T) {
	base := map[string]string{"DATABASE_URL": "x", "PARLEY_JWT_KEYS": "k", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}
	c, err := Load(env(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.WebhookAllowHTTP || len(c.WebhookAllowedNetworks) != 0 || c.WebhookTimeout != 15*time.Second {
		t.Fatalf("defaults: allow http %v, networks %v, timeout %v; want false, none, 15s", c.WebhookAllowHTTP, c.WebhookAllowedNetworks, c.WebhookTimeout)
	}

	m := map[string]string{"PARLEY_WEBHOOK_ALLOW_HTTP": "true", "PARLEY_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1, 10.20.0.0/16", "PARLEY_WEBHOOK_TIMEOUT": "3s"}
	for k, v := range base {
		m[k] = v
	}
	c, err = Load(env(m))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.20.0.0/16")}
	if !c.WebhookAllowHTTP || len(c.WebhookAllowedNetworks) != 2 || c.WebhookAllowedNetworks[0] != want[0] || c.WebhookAllowedNetworks[1] != want[1] || c.WebhookTimeout != 3*time.Second {
		t.Fatalf("got allow http %v, networks %v, timeout %v", c.WebhookAllowHTTP, c.WebhookAllowedNetworks, c.WebhookTimeout)
	}

	for name, value := range map[string]string{
		"PARLEY_WEBHOOK_ALLOW_HTTP":       "yes please",
		"PARLEY_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/33",
		"PARLEY_WEBHOOK_TIMEOUT":          "1ms",
	} {
		m := map[string]string{name: value}
		for k, v := range base {
			m[k] = v
		}
		_, err := Load(env(m))
		var e *Error
		if !errors.As(err, &e) || e.Var != name {
			t.Errorf("%s=%q: got %v, want an error naming %s", name, value, err, name)
		}
	}
}
