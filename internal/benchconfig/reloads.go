package benchconfig

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// AppliedReloads reads the control plane's JSON log and returns, for every applied
// reload ("routes config applied": load, validate, translate, snapshot update), when it
// was logged and how long it took by its own account.
func AppliedReloads(log string) ([]time.Time, []time.Duration, error) {
	var at []time.Time
	var took []time.Duration
	for _, line := range strings.Split(log, "\n") {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
			Took string    `json:"took"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "routes config applied" {
			continue
		}
		d, err := time.ParseDuration(rec.Took)
		if err != nil {
			return nil, nil, fmt.Errorf("control plane log: took %q: %v", rec.Took, err)
		}
		at = append(at, rec.Time)
		took = append(took, d)
	}
	return at, took, nil
}
