package cache

import (
	"testing"

	"github.com/google/uuid"
)

// BenchmarkDecodePage is the decoding a cached ListMessages page gets on
// every hit.
func BenchmarkDecodePage(b *testing.B) {
	id := uuid.New()
	enc := encodePage(1000, testPage(id, 50))
	b.ReportAllocs()
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, _, err := decodePage(id, enc); err != nil {
			b.Fatal(err)
		}
	}
}
