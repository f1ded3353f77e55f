// The /_fake/ control endpoints and the programmable fault queue.

package fakellm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// fault is a queued misbehaviour for callers (such as SDKs behind the edge)
// that cannot set x-fake-* headers themselves.
type fault struct {
	status           int
	delay            time.Duration
	reset            bool
	retryAfter       string
	resetAfterChunks int // -1: never
	remaining        int
	// when limits the fault to requests whose header when.Name equals when.Value (a key
	// the provider rate-limits while its others still serve); nil matches every request.
	when *headerCondition
}

// headerCondition is a fault's "when_header": {"name": ..., "value": ...}.
type headerCondition struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// faultJSON is the wire form of a fault on /_fake/faults.
type faultJSON struct {
	Status           int              `json:"status,omitempty"`
	Delay            string           `json:"delay,omitempty"`
	Reset            bool             `json:"reset,omitempty"`
	RetryAfter       json.RawMessage  `json:"retry_after,omitempty"`
	ResetAfterChunks *int             `json:"reset_after_chunks,omitempty"`
	Count            int              `json:"count"`
	WhenHeader       *headerCondition `json:"when_header,omitempty"`
}

func (f fault) toJSON() faultJSON {
	out := faultJSON{Status: f.status, Reset: f.reset, Count: f.remaining, WhenHeader: f.when}
	if f.delay > 0 {
		out.Delay = f.delay.String()
	}
	if f.retryAfter != "" {
		out.RetryAfter, _ = json.Marshal(f.retryAfter)
	}
	if f.resetAfterChunks >= 0 {
		n := f.resetAfterChunks
		out.ResetAfterChunks = &n
	}
	return out
}

func parseFault(body []byte) (fault, error) {
	var in faultJSON
	dec := json.NewDecoder(bytes.NewReader(body))
	// Unknown fields are rejected so that a typo ("code" for "status") fails
	// loudly instead of queueing a fault that does nothing.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return fault{}, fmt.Errorf("decoding fault: %w", err)
	}
	f := fault{status: in.Status, reset: in.Reset, resetAfterChunks: -1, remaining: in.Count, when: in.WhenHeader}
	if f.when != nil && f.when.Name == "" {
		return fault{}, errors.New("when_header.name must not be empty")
	}
	if f.remaining == 0 {
		f.remaining = 1
	}
	if f.remaining < 0 {
		return fault{}, errors.New("count must not be negative")
	}
	if f.status != 0 && (f.status < 400 || f.status > 599) {
		return fault{}, fmt.Errorf("status must be in [400, 599], got %d", f.status)
	}
	if in.Delay != "" {
		d, err := parseDuration("delay", in.Delay)
		if err != nil {
			return fault{}, err
		}
		f.delay = d
	}
	if len(in.RetryAfter) > 0 && string(in.RetryAfter) != "null" {
		// Both "2" and 2 are accepted because the header value is a string
		// but people naturally write seconds as a number.
		var s string
		if err := json.Unmarshal(in.RetryAfter, &s); err != nil {
			var n json.Number
			if err := json.Unmarshal(in.RetryAfter, &n); err != nil {
				return fault{}, errors.New("retry_after must be a string or a number")
			}
			s = n.String()
		}
		f.retryAfter = s
	}
	if in.ResetAfterChunks != nil {
		if *in.ResetAfterChunks < 0 {
			return fault{}, errors.New("reset_after_chunks must not be negative")
		}
		f.resetAfterChunks = *in.ResetAfterChunks
	}
	if f.status == 0 && f.delay == 0 && !f.reset && f.resetAfterChunks < 0 {
		return fault{}, errors.New("fault has no effect: set status, delay, reset or reset_after_chunks")
	}
	return f, nil
}

func (s *Server) pushFault(f fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
}

// popFault takes one use of the first queued fault that applies to a request with
// headers h; faults limited to other requests stay queued.
func (s *Server) popFault(h http.Header) (fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		f := s.faults[i]
		if f.when != nil && h.Get(f.when.Name) != f.when.Value {
			continue
		}
		s.faults[i].remaining--
		if s.faults[i].remaining <= 0 {
			s.faults = slices.Delete(s.faults, i, i+1)
		}
		return f, true
	}
	return fault{}, false
}

func (s *Server) pendingFaults() []faultJSON {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]faultJSON, 0, len(s.faults))
	for _, f := range s.faults {
		out = append(out, f.toJSON())
	}
	return out
}

// serveControl handles /_fake/*. These requests are deliberately not
// recorded and never consume faults, so a test's own bookkeeping does not
// disturb what it is measuring.
func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/_fake/healthz":
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok")
	case "/_fake/requests":
		if !allow(w, r, http.MethodGet, http.MethodDelete) {
			return
		}
		if r.Method == http.MethodDelete {
			s.mu.Lock()
			s.requests = nil
			s.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, s.Requests())
	case "/_fake/faults":
		if !allow(w, r, http.MethodGet, http.MethodPost, http.MethodDelete) {
			return
		}
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, s.pendingFaults())
		case http.MethodDelete:
			s.mu.Lock()
			s.faults = nil
			s.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		default:
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			f, err := parseFault(body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			s.pushFault(f)
			s.log.Info("fault queued", "status", f.status, "delay", f.delay, "reset", f.reset,
				"retry_after", f.retryAfter, "reset_after_chunks", f.resetAfterChunks, "count", f.remaining)
			writeJSON(w, http.StatusCreated, f.toJSON())
		}
	default:
		http.NotFound(w, r)
	}
}

func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	if slices.Contains(methods, r.Method) {
		return true
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}
