package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/parley-dev/parley/internal/localserver"
)

const (
	azuriteDirPrefix    = "parley-azurite-"
	azuriteReadyTimeout = 60 * time.Second
	azuriteStartTries   = 3
	// azuriteMain is the blob server's entry point inside the npm package
	// pinned by tools/azurite (installed with `npm ci --prefix tools/azurite`).
	azuriteMain = "tools/azurite/node_modules/azurite/dist/src/blob/main.js"
	// azuriteAccount and azuriteKey are Azurite's well-known development
	// account; they are public and grant nothing outside the emulator.
	azuriteAccount = "devstoreaccount1"
	azuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

var azurite struct {
	once sync.Once
	err  error
	conn string
	dir  string
}

// AzuriteConnectionString returns an Azure Storage connection string for this
// test process's private Azurite blob server, started on first use from the
// npm package pinned in tools/azurite and kept in memory. Tests share the
// server, so each should use its own container (see AzuriteContainer).
func AzuriteConnectionString(t testing.TB) string {
	t.Helper()
	azurite.once.Do(func() { azurite.conn, azurite.err = startAzurite() })
	if azurite.err != nil {
		t.Fatalf("testenv: Azurite: %v", azurite.err)
	}
	return azurite.conn
}

// AzuriteContainer returns the connection string of the shared Azurite
// server and a container name no other test uses. The container is not
// created: the blob store creates its container when missing.
func AzuriteContainer(t testing.TB) (connString, container string) {
	t.Helper()
	return AzuriteConnectionString(t), randomName("test-")
}

func startAzurite() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	main := filepath.Join(root, azuriteMain)
	if _, err := os.Stat(main); err != nil {
		return "", fmt.Errorf("%s is missing: run `npm ci --prefix tools/azurite` (make test does): %w", azuriteMain, err)
	}
	node, err := lookNode()
	if err != nil {
		return "", err
	}
	dir, err := makeDir(azuriteDirPrefix)
	if err != nil {
		return "", err
	}
	azurite.dir = dir
	logPath := filepath.Join(dir, "azurite.log")
	for attempt := 1; ; attempt++ {
		port, err := localserver.FreePort()
		if err != nil {
			return "", err
		}
		proc, err := localserver.Start(localserver.Command{Name: "azurite", Path: node, Dir: dir, Log: logPath, User: localserver.CurrentUser(), Args: []string{
			main,
			"--blobHost", "127.0.0.1",
			"--blobPort", strconv.Itoa(port),
			// In memory; the working directory (dir) takes what little
			// Azurite still writes.
			"--inMemoryPersistence",
			// The Go SDK speaks a newer API version than the emulator knows.
			"--skipApiVersionCheck",
			"--disableProductStyleUrl",
			"--disableTelemetry",
			"--silent",
		}})
		if err != nil {
			return "", err
		}
		track(proc)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = proc.WaitReady(context.Background(), azuriteReadyTimeout, func(ctx context.Context) error {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return err
			}
			return c.Close()
		})
		if err == nil {
			return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=http://%s/%s;",
				azuriteAccount, azuriteKey, addr, azuriteAccount), nil
		}
		stop(proc)
		if attempt == azuriteStartTries {
			return "", err
		}
	}
}

// lookNode finds the node binary, preferring PATH.
func lookNode() (string, error) {
	for _, name := range []string{"node", "/usr/bin/node", "/usr/local/bin/node"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("node not found on PATH: install Node.js 20 or newer")
}

// moduleRoot walks up from the test's working directory (its package
// directory) to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}
