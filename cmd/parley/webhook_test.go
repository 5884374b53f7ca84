package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestServeRefusesToStartWithoutLiveKitKeys: with LiveKit's public
// development keys as a fallback anyone could sign webhooks, so the binary
// stops with one line naming both variables and exit code 2.
func TestServeRefusesToStartWithoutLiveKitKeys(t *testing.T) {
	bin := buildBinary(t)
	full := baseEnv(t, "postgres://127.0.0.1:1/unused")
	// An override of "" leaves the variable out.
	for name, override := range map[string]map[string]string{
		"neither":   {"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": ""},
		"no key":    {"LIVEKIT_API_KEY": ""},
		"no secret": {"LIVEKIT_API_SECRET": ""},
		"blank":     {"LIVEKIT_API_KEY": " ", "LIVEKIT_API_SECRET": " "},
	} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(bin, "serve")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			for k, v := range full {
				if o, ok := override[k]; ok {
					v = o
				}
				if v != "" {
					cmd.Env = append(cmd.Env, k+"="+v)
				}
			}
			var stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = io.Discard, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("serve without LiveKit keys: %v, want exit code 2; stderr:\n%s", err, stderr.String())
			}
			out := stderr.String()
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "parley: config: LIVEKIT_API_") ||
				!strings.Contains(out, "LIVEKIT_API_KEY and LIVEKIT_API_SECRET") {
				t.Errorf("stderr %q, want one line naming LIVEKIT_API_KEY and LIVEKIT_API_SECRET", out)
			}
		})
	}
}
