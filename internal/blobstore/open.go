package blobstore

import (
	"context"
	"fmt"
	"net/http"

	"github.com/parley-dev/parley/internal/file"
)

// Config says which store Open builds: Azure Blob storage when
// AzureConnectionString is set, else the directory store.
type Config struct {
	AzureConnectionString string
	Container             string
	// Dir and PublicURL are the directory store's root and the base URL of
	// its signed URLs.
	Dir       string
	PublicURL string
}

// Open returns Azure Blob storage when a connection string is set, else the
// local directory store with the routes that serve its signed URLs.
func Open(ctx context.Context, c Config) (file.Blobs, map[string]http.Handler, error) {
	if c.AzureConnectionString != "" {
		az, err := NewAzure(ctx, c.AzureConnectionString, c.Container)
		if err != nil {
			return nil, nil, fmt.Errorf("azure blob storage: %w", err)
		}
		return az, nil, nil
	}
	dir, err := NewDir(c.Dir, c.PublicURL, nil)
	if err != nil {
		return nil, nil, err
	}
	return dir, dir.Routes(), nil
}
