package testenv

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// webhookReceiverScript is the receiver's entry point beside the npm package
// pinned by tools/standardwebhooks (installed with `npm ci --prefix
// tools/standardwebhooks`).
const (
	webhookReceiverScript = "tools/standardwebhooks/receiver.mjs"
	webhookReceiverLib    = "tools/standardwebhooks/node_modules/standardwebhooks/package.json"
)

// WebhookReceiver starts a receiver on 127.0.0.1 that verifies every
// delivery with the pinned Standard Webhooks reference library and returns
// its base URL. A delivery to BASE/any/path?secret=whsec_... is verified
// with that secret: 200 and {"verified": true, "id": ..., "payload": ...}
// when it verifies, else 401 and {"verified": false, "error": the
// library's message}. It stops when the test ends.
func WebhookReceiver(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("testenv: webhook receiver: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, webhookReceiverLib)); err != nil {
		t.Fatalf("testenv: %s is missing: run `npm ci --prefix tools/standardwebhooks` (make test does): %v", webhookReceiverLib, err)
	}
	node, err := lookNode()
	if err != nil {
		t.Fatalf("testenv: webhook receiver: %v", err)
	}
	cmd := exec.Command(node, filepath.Join(root, webhookReceiverScript))
	cmd.Stderr = os.Stderr
	// The receiver exits when its stdin closes, so it never outlives a test
	// process that dies without cleanup.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start webhook receiver: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		if s.Scan() {
			line <- s.Text()
		}
		close(line)
	}()
	select {
	case l, ok := <-line:
		port, found := strings.CutPrefix(l, "listening ")
		if !ok || !found {
			t.Fatalf("testenv: webhook receiver said %q, want \"listening PORT\"", l)
		}
		return fmt.Sprintf("http://127.0.0.1:%s", port)
	case <-time.After(30 * time.Second):
		t.Fatal("testenv: webhook receiver did not start within 30s")
		return ""
	}
}

// VerifyWebhook hands a delivery (its webhook-* headers and body) to the
// receiver at base (WebhookReceiver's) and returns nil if the reference
// library verifies it with secret (whsec_ text), else an error carrying the
// library's answer.
func VerifyWebhook(ctx context.Context, base, secret string, header http.Header, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/?secret="+url.QueryEscape(secret), bytes.NewReader(body))
	if err != nil {
		return err
	}
	for _, h := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		req.Header.Set(h, header.Get(h))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reference verifier: %w", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the reference library refused delivery %s: %d %s", header.Get("webhook-id"), resp.StatusCode, answer)
	}
	return nil
}
