package rpc

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/google/uuid"
	"github.com/livekit/protocol/livekit"

	lkauth "github.com/parley-dev/parley/internal/auth"
	"github.com/parley-dev/parley/internal/file"
	parleyv1 "github.com/parley-dev/parley/internal/gen/parley/v1"
	"github.com/parley-dev/parley/internal/postgres"
	"github.com/parley-dev/parley/internal/room"
	"github.com/parley-dev/parley/internal/rtc"
	"github.com/parley-dev/parley/internal/rtc/rtctest"
)

// egressBlobs is the blob store as LiveKit egress sees it: it writes under
// names of its own choosing, with its own credentials, not through Parley.
type egressBlobs struct {
	t   *testing.T
	env *fileEnv
}

func (e egressBlobs) write(name string, data []byte) {
	e.t.Helper()
	if e.env.dirRoot != "" {
		p := filepath.Join(e.env.dirRoot, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			e.t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if _, err := e.container().NewBlockBlobClient(name).UploadBuffer(e.t.Context(), data, nil); err != nil {
		e.t.Fatal(err)
	}
}

func (e egressBlobs) exists(name string) bool {
	e.t.Helper()
	if e.env.dirRoot != "" {
		_, err := os.Stat(filepath.Join(e.env.dirRoot, filepath.FromSlash(name)))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			e.t.Fatal(err)
		}
		return err == nil
	}
	_, err := e.container().NewBlobClient(name).GetProperties(e.t.Context(), nil)
	// HEAD answers carry no error code, only the status.
	var re *azcore.ResponseError
	if err != nil && !(errors.As(err, &re) && re.StatusCode == http.StatusNotFound) {
		e.t.Fatal(err)
	}
	return err == nil
}

func (e egressBlobs) container() *container.Client {
	c, err := container.NewClientFromConnectionString(e.env.azConn, e.env.azContainer, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// TestEgressRecordingBecomesAFile follows a recording from LiveKit egress to
// a download: egress writes its file under its own name, the signed
// egress_ended webhook arrives (twice, as LiveKit may redeliver), and the
// room's conversation gets one READY RECORDING file whose download URL
// serves the bytes, kept under the file's own blob name; egress's original
// is removed; deleting the file removes its blob with nothing left in the
// outbox.
func TestEgressRecordingBecomesAFile(t *testing.T) {
	t.Parallel()
	for _, kind := range blobKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := newFileEnv(t, kind, fileEnvOptions{})
			egress := egressBlobs{t: t, env: env}
			ctx := t.Context()
			lkServer := rtctest.NewServer(t, roomTestKey, roomTestSecret)
			lk, err := rtc.New(rtc.Config{URL: lkServer.URL, PublicURL: "wss://livekit.example.com",
				APIKey: roomTestKey, APISecret: roomTestSecret, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			log := slog.New(slog.DiscardHandler)
			var wakes atomic.Int32
			rooms := room.NewService(postgres.NewRoomStore(env.db), lk, room.Options{Log: log, RecordingsQueued: func() {
				wakes.Add(1)
				env.wake()
			}})
			t.Cleanup(rooms.Close)
			webhook := NewWebhookHandler(lk, rooms, log)

			owner := env.user(t)
			r, _, err := rooms.CreateRoom(ctx, lkauth.Principal{ID: owner, Kind: lkauth.KindUser, TokenID: "t", ExpiresAt: time.Now().Add(time.Hour)}, "recorded")
			if err != nil {
				t.Fatal(err)
			}
			source := "recordings/" + r.LiveKitRoom + "/EG_1.mp4"
			data := append([]byte("\x00\x00\x00\x18ftypmp42"), bytes.Repeat([]byte("video"), 4000)...)
			egress.write(source, data)
			ev := &livekit.WebhookEvent{Id: "EV_" + uuid.NewString(), Event: "egress_ended", CreatedAt: time.Now().Unix(),
				EgressInfo: &livekit.EgressInfo{EgressId: "EG_1", RoomName: r.LiveKitRoom, Status: livekit.EgressStatus_EGRESS_COMPLETE,
					FileResults: []*livekit.FileInfo{{Filename: source, Location: "https://storage.example/" + source, Size: int64(len(data))}}}}
			for range 2 {
				rec := httptest.NewRecorder()
				webhook.ServeHTTP(rec, signedWebhook(t, ev))
				if rec.Code != http.StatusOK {
					t.Fatalf("egress_ended: HTTP %d", rec.Code)
				}
			}

			if n := wakes.Load(); n != 1 {
				t.Errorf("the outbox worker was woken %d times, want once (the redelivery queues nothing)", n)
			}
			c := env.files["connect"]
			var rec *parleyv1.File
			deadline := time.Now().Add(10 * time.Second)
			for rec == nil {
				list, err := c.ListFiles(ctx, as(owner, false, &parleyv1.ListFilesRequest{ConversationId: r.ConversationID.String()}))
				if err != nil {
					t.Fatal(err)
				}
				switch fs := list.Msg.GetFiles(); {
				case len(fs) > 1:
					t.Fatalf("files = %v, want one recording", fs)
				case len(fs) == 1 && fs[0].GetStatus() == parleyv1.FileStatus_FILE_STATUS_READY:
					rec = fs[0]
				case time.Now().After(deadline):
					t.Fatalf("no READY recording after the webhook: %v", fs)
				default:
					time.Sleep(50 * time.Millisecond)
				}
			}
			if rec.GetKind() != parleyv1.FileKind_FILE_KIND_RECORDING || rec.GetFilename() != "EG_1.mp4" ||
				rec.GetContentType() != "video/mp4" || rec.GetSizeBytes() != int64(len(data)) {
				t.Errorf("recording = %v", rec)
			}
			got, err := c.GetFile(ctx, as(owner, false, &parleyv1.GetFileRequest{FileId: rec.GetId()}))
			if err != nil {
				t.Fatal(err)
			}
			resp, body := httpDo(t, http.MethodGet, got.Msg.GetDownloadUrl(), nil, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("download of the recording = %d (%d bytes), want the %d egress wrote", resp.StatusCode, len(body), len(data))
			}
			final := file.BlobName(r.ConversationID, uuid.MustParse(rec.GetId()))
			if _, err := env.blobs.Stat(ctx, final); err != nil {
				t.Errorf("the recording is not under its own blob name %s: %v", final, err)
			}
			deadline = time.Now().Add(10 * time.Second)
			for egress.exists(source) {
				if time.Now().After(deadline) {
					t.Fatalf("egress's original %s is still there", source)
				}
				time.Sleep(50 * time.Millisecond)
			}

			if _, err := c.DeleteFile(ctx, as(owner, false, &parleyv1.DeleteFileRequest{FileId: rec.GetId()})); err != nil {
				t.Fatal(err)
			}
			waitBlobGone(t, env.blobs, final)
			waitOutboxEmpty(t, env.db)
		})
	}
}
