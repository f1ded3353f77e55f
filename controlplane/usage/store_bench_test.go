package usage

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkSQLiteInsert is the ledger's write to SQLite per record, in batches of the size
// its 200 ms flush collects at about 1,400 requests/s. The table grows with b.N and an
// insert costs more in a larger one, so compare runs of the same count:
// go test -run '^$' -bench SQLiteInsert -benchtime 60000x ./controlplane/usage/
func BenchmarkSQLiteInsert(b *testing.B) {
	s, err := OpenSQLite(b.Context(), filepath.Join(b.TempDir(), "usage.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 280
	now := time.Now().UTC()
	recs := make([]Record, batch)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		for j := range recs {
			// Envoy's request ids are random UUIDs: each lands somewhere in the key index.
			recs[j] = rec(fmt.Sprintf("%08x-9f0c-4f7e-a1b2-%012x", rand.Uint32(), rand.Uint64()>>16), "alice", "team-a", "gpt-4o-mini", now, 12, 34, f64(0.0001))
		}
		if err := s.Insert(b.Context(), recs[:min(batch, b.N-i)]); err != nil {
			b.Fatal(err)
		}
	}
}
