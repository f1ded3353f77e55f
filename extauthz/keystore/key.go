package keystore

import (
	"fmt"
	"log/slog"
	"strconv"
)

// redacted stands for a key's value wherever a Key is printed or logged.
const redacted = "[redacted]"

// Key is one upstream provider key. Its value is reachable only through Value: printing a
// Key with any fmt verb, or logging it with slog, shows its name and "[redacted]".
type Key struct {
	// Name is the key file's name within its upstream directory. It is safe to log.
	Name string
	// value sits behind a pointer to a string so that even fmt's reflection-based printing
	// of a Key nested in an unexported struct field (where fmt cannot call Key's methods)
	// shows an address rather than the secret: fmt prints a *string as an address at any
	// depth and with any verb.
	value *string
}

func newKey(name, value string) Key { return Key{Name: name, value: &value} }

// Value returns the key itself, for the request header. Never log it.
func (k Key) Value() string {
	if k.value == nil {
		return ""
	}
	return *k.value
}

// String implements fmt.Stringer without the value.
func (k Key) String() string {
	return "keystore.Key{Name:" + strconv.Quote(k.Name) + ", value:" + redacted + "}"
}

// GoString implements fmt.GoStringer without the value.
func (k Key) GoString() string { return k.String() }

// Format implements fmt.Formatter so that every verb (%v, %+v, %#v, %s, %q, %x, ...) prints
// the redacted form.
func (k Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// LogValue implements slog.LogValuer: the name, and "[redacted]" for the value.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", k.Name), slog.String("value", redacted))
}
