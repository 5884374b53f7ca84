// Package blobstore keeps file bytes: in Azure Blob storage (Azurite in
// tests), or in a local directory for `parley dev`, whose signed URLs Parley
// serves itself. Both implement file.Blobs and write only the names
// file.BlobName and file.StagingBlobName make, so no user text ever reaches
// a storage path; they read and delete, besides, the names LiveKit egress
// chose for its recordings, confined to the container.
package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/lease"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/parley-dev/parley/internal/file"
)

const (
	// uploadBlockSize and uploadConcurrency bound the memory of a streamed
	// upload (an export) to about their product.
	uploadBlockSize   = 1 << 20
	uploadConcurrency = 2
)

// Azure keeps blobs in one Azure Blob storage container. It signs upload and
// download URLs with the account key (service SAS), so the connection string
// must carry AccountName and AccountKey.
type Azure struct {
	container *container.Client
	cred      *azblob.SharedKeyCredential
	name      string
	protocol  sas.Protocol
}

var _ file.Blobs = (*Azure)(nil)

// NewAzure connects to the account of connString and creates the container
// when it does not exist yet.
func NewAzure(ctx context.Context, connString, containerName string) (*Azure, error) {
	acct, err := parseConnectionString(connString)
	if err != nil {
		return nil, err
	}
	cred, err := azblob.NewSharedKeyCredential(acct.name, acct.key)
	if err != nil {
		return nil, fmt.Errorf("azure blob: account key: %w", err)
	}
	containerURL, err := url.JoinPath(acct.endpoint, containerName)
	if err != nil {
		return nil, fmt.Errorf("azure blob: container url: %w", err)
	}
	c, err := container.NewClientWithSharedKeyCredential(containerURL, cred, nil)
	if err != nil {
		return nil, fmt.Errorf("azure blob: %w", err)
	}
	if _, err := c.Create(ctx, nil); err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return nil, fmt.Errorf("azure blob: create container %s: %w", containerName, err)
	}
	a := &Azure{container: c, cred: cred, name: containerName, protocol: sas.ProtocolHTTPS}
	if strings.HasPrefix(acct.endpoint, "http://") {
		// The emulator speaks plain HTTP; real accounts get HTTPS-only URLs.
		a.protocol = sas.ProtocolHTTPSandHTTP
	}
	return a, nil
}

type account struct {
	name, key, endpoint string
}

// Azurite's well-known development account, which UseDevelopmentStorage=true
// names.
const (
	devAccountName = "devstoreaccount1"
	devAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	devEndpoint    = "http://127.0.0.1:10000/devstoreaccount1"
)

// parseConnectionString reads the parts of an Azure Storage connection
// string that name the blob endpoint and the account key. Errors never
// quote the string: it holds the key.
func parseConnectionString(s string) (account, error) {
	kv := map[string]string{}
	for part := range strings.SplitSeq(s, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			kv[strings.ToLower(k)] = v
		}
	}
	if strings.EqualFold(kv["usedevelopmentstorage"], "true") {
		a := account{name: devAccountName, key: devAccountKey, endpoint: devEndpoint}
		if p := kv["developmentstorageproxyuri"]; p != "" {
			a.endpoint = strings.TrimRight(p, "/") + ":10000/" + devAccountName
		}
		return a, nil
	}
	a := account{name: kv["accountname"], key: kv["accountkey"], endpoint: strings.TrimRight(kv["blobendpoint"], "/")}
	if a.name == "" || a.key == "" {
		return account{}, errors.New("azure blob: the connection string needs AccountName and AccountKey (upload and download URLs are signed with the key)")
	}
	if a.endpoint == "" {
		proto := kv["defaultendpointsprotocol"]
		if proto == "" {
			proto = "https"
		}
		suffix := kv["endpointsuffix"]
		if suffix == "" {
			suffix = "core.windows.net"
		}
		a.endpoint = fmt.Sprintf("%s://%s.blob.%s", proto, a.name, suffix)
	}
	if u, err := url.Parse(a.endpoint); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return account{}, errors.New("azure blob: the connection string's blob endpoint is not an http(s) URL")
	}
	return a, nil
}

func (a *Azure) blockBlob(name string) (*blockblob.Client, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return a.container.NewBlockBlobClient(name), nil
}

// sourceBlob is blockBlob for the names checkSourceName allows.
func (a *Azure) sourceBlob(name string) (*blockblob.Client, error) {
	if err := checkSourceName(name); err != nil {
		return nil, err
	}
	return a.container.NewBlockBlobClient(name), nil
}

// notFound translates storage's "no such blob" into file.ErrBlobNotFound.
// HEAD answers carry no error body, hence the status check.
func notFound(err error) bool {
	var re *azcore.ResponseError
	return bloberror.HasCode(err, bloberror.BlobNotFound) ||
		(errors.As(err, &re) && re.StatusCode == http.StatusNotFound)
}

// Put implements file.Blobs. It streams r in blocks, so memory stays
// bounded whatever r's length.
func (a *Azure) Put(ctx context.Context, name string, r io.Reader, contentType string) error {
	bb, err := a.blockBlob(name)
	if err != nil {
		return err
	}
	_, err = bb.UploadStream(ctx, r, &blockblob.UploadStreamOptions{
		BlockSize:   uploadBlockSize,
		Concurrency: uploadConcurrency,
		HTTPHeaders: &blob.HTTPHeaders{BlobContentType: &contentType},
	})
	if err != nil {
		return fmt.Errorf("azure blob: upload %s: %w", name, err)
	}
	return nil
}

// Stat implements file.Blobs.
func (a *Azure) Stat(ctx context.Context, name string) (file.BlobInfo, error) {
	bb, err := a.blockBlob(name)
	if err != nil {
		return file.BlobInfo{}, err
	}
	props, err := bb.GetProperties(ctx, nil)
	if notFound(err) {
		return file.BlobInfo{}, file.ErrBlobNotFound
	}
	if err != nil {
		return file.BlobInfo{}, fmt.Errorf("azure blob: stat %s: %w", name, err)
	}
	var size int64
	if props.ContentLength != nil {
		size = *props.ContentLength
	}
	return file.BlobInfo{Size: size}, nil
}

// Open implements file.Blobs.
func (a *Azure) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	bb, err := a.blockBlob(name)
	if err != nil {
		return nil, err
	}
	resp, err := bb.DownloadStream(ctx, nil)
	if notFound(err) {
		return nil, file.ErrBlobNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("azure blob: download %s: %w", name, err)
	}
	return resp.Body, nil
}

// Copy implements file.Blobs with Copy Blob inside the container (src may
// be a name egress chose, see checkSourceName), which
// needs no SAS for a source in the same account, and waits for the copy to
// finish. CopyCreate sends If-None-Match: *, so storage itself refuses an
// existing destination.
func (a *Azure) Copy(ctx context.Context, src, dst string, mode file.CopyMode) error {
	sb, err := a.sourceBlob(src)
	if err != nil {
		return err
	}
	db, err := a.blockBlob(dst)
	if err != nil {
		return err
	}
	opts := &blob.StartCopyFromURLOptions{}
	if mode == file.CopyCreate {
		anyETag := azcore.ETagAny
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: &anyETag}}
	}
	resp, err := db.StartCopyFromURL(ctx, sb.URL(), opts)
	switch {
	case err == nil:
	case bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet):
		return file.ErrBlobExists
	case notFound(err):
		return file.ErrBlobNotFound
	default:
		return fmt.Errorf("azure blob: copy %s to %s: %w", src, dst, err)
	}
	status := resp.CopyStatus
	for wait := 50 * time.Millisecond; status != nil && *status == blob.CopyStatusTypePending; wait = min(2*wait, 2*time.Second) {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("azure blob: copy %s to %s: %w", src, dst, ctx.Err())
		case <-t.C:
		}
		props, err := db.GetProperties(ctx, nil)
		if err != nil {
			return fmt.Errorf("azure blob: copy %s to %s: status: %w", src, dst, err)
		}
		if props.CopyID == nil || resp.CopyID == nil || *props.CopyID != *resp.CopyID {
			return fmt.Errorf("azure blob: copy %s to %s: replaced by another copy", src, dst)
		}
		status = props.CopyStatus
	}
	if status != nil && *status != blob.CopyStatusTypeSuccess {
		// A failed copy must not leave a partial blob that CopyCreate would
		// then keep forever.
		_, derr := db.Delete(context.WithoutCancel(ctx), &blob.DeleteOptions{AccessConditions: &blob.AccessConditions{
			ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: resp.ETag}}})
		return fmt.Errorf("azure blob: copy %s to %s: status %s (cleanup: %v)", src, dst, *status, derr)
	}
	return nil
}

// breakLease breaks a lease at once. Blobs are no longer leased, but those
// that an earlier release sealed with one still are.
func (a *Azure) breakLease(ctx context.Context, bb *blockblob.Client, name string) error {
	lc, err := lease.NewBlobClient(bb, nil)
	if err != nil {
		return fmt.Errorf("azure blob: lease %s: %w", name, err)
	}
	var now int32
	_, err = lc.BreakLease(ctx, &lease.BlobBreakOptions{BreakPeriod: &now})
	if err == nil || notFound(err) || bloberror.HasCode(err, bloberror.LeaseNotPresentWithLeaseOperation) {
		return nil
	}
	return fmt.Errorf("azure blob: break lease %s: %w", name, err)
}

// Delete implements file.Blobs. A leased blob's lease is broken first.
func (a *Azure) Delete(ctx context.Context, name string) error {
	bb, err := a.sourceBlob(name)
	if err != nil {
		return err
	}
	include := blob.DeleteSnapshotsOptionTypeInclude
	opts := &blob.DeleteOptions{DeleteSnapshots: &include}
	_, err = bb.Delete(ctx, opts)
	if bloberror.HasCode(err, bloberror.LeaseIDMissing) {
		if err := a.breakLease(ctx, bb, name); err != nil {
			return err
		}
		_, err = bb.Delete(ctx, opts)
	}
	if err == nil || notFound(err) {
		return nil
	}
	return fmt.Errorf("azure blob: delete %s: %w", name, err)
}

// UploadURL implements file.Blobs: a service SAS for exactly this blob with
// create and write permission only, and the headers Put Blob needs.
func (a *Azure) UploadURL(_ context.Context, name string, spec file.UploadSpec) (file.UploadTarget, error) {
	u, err := a.sign(name, (&sas.BlobPermissions{Create: true, Write: true}).String(), spec.Expires, "", "")
	if err != nil {
		return file.UploadTarget{}, err
	}
	return file.UploadTarget{URL: u, Headers: map[string]string{
		"x-ms-blob-type": "BlockBlob",
		"Content-Type":   spec.ContentType,
	}}, nil
}

// DownloadURL implements file.Blobs: a read-only service SAS for exactly
// this blob whose responses carry the file's content type and disposition.
func (a *Azure) DownloadURL(_ context.Context, name string, spec file.DownloadSpec) (string, error) {
	return a.sign(name, (&sas.BlobPermissions{Read: true}).String(), spec.Expires, spec.ContentType, spec.ContentDisposition)
}

func (a *Azure) sign(name, perms string, expires time.Time, contentType, disposition string) (string, error) {
	bb, err := a.blockBlob(name)
	if err != nil {
		return "", err
	}
	// No start time: the URL is valid at once whatever the clock skew, and
	// for no longer than until expires.
	qp, err := sas.BlobSignatureValues{
		Protocol:           a.protocol,
		ExpiryTime:         expires.UTC(),
		Permissions:        perms,
		ContainerName:      a.name,
		BlobName:           name,
		ContentType:        contentType,
		ContentDisposition: disposition,
	}.SignWithSharedKey(a.cred)
	if err != nil {
		return "", fmt.Errorf("azure blob: sign %s: %w", name, err)
	}
	return bb.URL() + "?" + qp.Encode(), nil
}
