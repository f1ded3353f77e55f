package usage

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Spool holds records on disk while the store cannot take them: append-only files of JSON
// lines, numbered so that replay keeps their order, bounded in total bytes. Past the bound
// new records are dropped (and counted by the caller): the edge's traffic never waits.
type Spool struct {
	dir      string
	maxBytes int64
	fileMax  int64

	mu    sync.Mutex
	files []spoolFile // oldest first; the last one is open for appends when cur != nil
	cur   *os.File
	bytes int64
	next  uint64
}

type spoolFile struct {
	seq  uint64
	size int64
}

// ErrSpoolFull is returned when a batch would take the spool past its bound.
var ErrSpoolFull = errors.New("usage spool full")

// OpenSpool opens dir, picking up files a previous run left behind.
func OpenSpool(dir string, maxBytes int64) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	s := &Spool{dir: dir, maxBytes: maxBytes, fileMax: max(min(maxBytes/16, 8<<20), 64<<10), next: 1}
	for _, e := range ents {
		seq, ok := strings.CutSuffix(e.Name(), ".jsonl")
		n, err := strconv.ParseUint(seq, 10, 64)
		if !ok || err != nil || e.IsDir() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("usage spool: %w", err)
		}
		s.files = append(s.files, spoolFile{seq: n, size: info.Size()})
		s.bytes += info.Size()
		s.next = max(s.next, n+1)
	}
	sort.Slice(s.files, func(i, j int) bool { return s.files[i].seq < s.files[j].seq })
	return s, nil
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d.jsonl", seq))
}

// Bytes is the spool's size on disk.
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// MaxBytes is the bound.
func (s *Spool) MaxBytes() int64 { return s.maxBytes }

// Empty reports whether nothing waits for replay.
func (s *Spool) Empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files) == 0
}

// Append writes rs at the end of the spool, all or nothing.
func (s *Spool) Append(rs []Record) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range rs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int64(buf.Len())
	if s.bytes+n > s.maxBytes {
		return ErrSpoolFull
	}
	if s.cur == nil || s.files[len(s.files)-1].size >= s.fileMax {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	if _, err := s.cur.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("usage spool: %w", err)
	}
	s.files[len(s.files)-1].size += n
	s.bytes += n
	return nil
}

// rotate closes the file being appended and starts the next. Called with mu held.
func (s *Spool) rotate() error {
	if s.cur != nil {
		if err := s.cur.Close(); err != nil {
			return fmt.Errorf("usage spool: %w", err)
		}
		s.cur = nil
	}
	f, err := os.OpenFile(s.path(s.next), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("usage spool: %w", err)
	}
	s.cur = f
	s.files = append(s.files, spoolFile{seq: s.next})
	s.next++
	return nil
}

// Oldest reads the oldest file's records (closing it for appends first if it is the one
// open). Lines that do not parse — a crash mid-write — are skipped and counted.
func (s *Spool) Oldest() (seq uint64, rs []Record, bad int, err error) {
	s.mu.Lock()
	if len(s.files) == 0 {
		s.mu.Unlock()
		return 0, nil, 0, nil
	}
	if len(s.files) == 1 && s.cur != nil {
		if err := s.cur.Close(); err != nil {
			s.mu.Unlock()
			return 0, nil, 0, fmt.Errorf("usage spool: %w", err)
		}
		s.cur = nil
	}
	seq = s.files[0].seq
	s.mu.Unlock()
	f, err := os.Open(s.path(seq))
	if err != nil {
		return 0, nil, 0, fmt.Errorf("usage spool: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var r Record
		if json.Unmarshal(sc.Bytes(), &r) != nil {
			bad++
			continue
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		return 0, nil, 0, fmt.Errorf("usage spool: %w", err)
	}
	return seq, rs, bad, nil
}

// Remove deletes a replayed file.
func (s *Spool) Remove(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.files) == 0 || s.files[0].seq != seq {
		return fmt.Errorf("usage spool: file %d is not the oldest", seq)
	}
	if err := os.Remove(s.path(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("usage spool: %w", err)
	}
	s.bytes -= s.files[0].size
	s.files = s.files[1:]
	return nil
}

// Close closes the file being appended.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil
	}
	err := s.cur.Close()
	s.cur = nil
	return err
}
