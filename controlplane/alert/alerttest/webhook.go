// Package alerttest is a webhook receiver for tests that run llmedge's alerter and check
// which messages it sends.
package alerttest

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync"

	"github.com/llmedge/llmedge/controlplane/alert"
)

// Webhook is a generic JSON webhook receiver (notifier type webhook): it records each
// alert.Message it is sent.
type Webhook struct {
	mu  sync.Mutex
	got []string
}

func (w *Webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	var m alert.Message
	if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	w.mu.Lock()
	w.got = append(w.got, m.Status+" "+m.Rule+" "+m.Key)
	w.mu.Unlock()
}

// Got returns the messages received so far as "status rule key", in arrival order.
func (w *Webhook) Got() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.got)
}
