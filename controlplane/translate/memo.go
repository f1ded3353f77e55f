package translate

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"sync"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/llmedge/llmedge/controlplane/model"
)

// Cache keeps the Envoy routes (and each region's callers' listener) of one translation
// for the next, keyed by everything each was made from, so a reload re-translates only
// what an edit touched. A route is ≈ 5 µs of building, packing and validating protos,
// times routes × regions on every reload (1,000 routes in 5 regions: most of a 30 ms
// translation on 2 cores).
//
// Correctness rests on envoyRoute and listener being functions of their arguments alone:
// the key is a complete encoding of those arguments (every field of the region, the
// upstream and the route, by reflection, so a field added to the model later is in the
// key without anyone remembering it; and the rate limits' deterministic encoding).
// Anything their output depends on must be passed to them, never read from elsewhere.
//
// The resources handed out are shared between translations and must not be modified: the
// translator builds them completely before they are cached, and nothing downstream writes
// to a translated resource.
//
// A Cache is safe for concurrent use. Entries not used by the latest translation are
// dropped, so it holds about one translation's routes.
type Cache struct {
	mu        sync.Mutex
	entries   map[string]*routev3.Route
	listeners map[string]*listenerv3.Listener
}

// NewCache returns an empty Cache.
func NewCache() *Cache { return &Cache{} }

// All is the package's All, reusing the routes of the previous translation whose inputs
// did not change.
func (c *Cache) All(cfg *model.Config) (map[string]*Resources, error) {
	c.mu.Lock()
	prev, prevL := c.entries, c.listeners
	c.mu.Unlock()
	memos := make([]*regionMemo, len(cfg.Regions))
	out, err := all(cfg, func(i int) *regionMemo {
		memos[i] = &regionMemo{
			prev: prev, next: map[string]*routev3.Route{}, hits: map[*routev3.Route]bool{},
			prevL: prevL, nextL: map[string]*listenerv3.Listener{},
		}
		return memos[i]
	})
	if err != nil {
		return nil, err
	}
	// Only a translation that succeeded whole is kept: its routes all passed validation,
	// which the next translation relies on (regionMemo.reused).
	next := make(map[string]*routev3.Route, len(prev))
	nextL := make(map[string]*listenerv3.Listener, len(prevL))
	for _, m := range memos {
		maps.Copy(next, m.next)
		maps.Copy(nextL, m.nextL)
	}
	c.mu.Lock()
	c.entries, c.listeners = next, nextL
	c.mu.Unlock()
	return out, nil
}

// regionMemo is one region's view of a Cache during a translation: prev and prevL are
// read-only (shared by the regions translated in parallel), next and nextL collect what
// this region used. A nil *regionMemo translates without caching.
type regionMemo struct {
	prev, next   map[string]*routev3.Route
	hits         map[*routev3.Route]bool
	prevL, nextL map[string]*listenerv3.Listener
	buf          []byte
}

// listener returns listener(r, usage), from the cache when it holds one. The callers'
// listener is most of what a region's translation builds besides its routes (the HTTP
// filters, each packed and validated), and depends on the region alone.
func (m *regionMemo) listener(r model.Region, usage usageSettings) (*listenerv3.Listener, error) {
	if m == nil {
		return listener(r, usage)
	}
	k, err := appendKey(nil, reflect.ValueOf(r), 0)
	if err != nil {
		return listener(r, usage)
	}
	k = appendKeyBool(appendKeyBool(k, usage.record), usage.envoyLog)
	l, ok := m.prevL[string(k)]
	if !ok {
		if l, err = listener(r, usage); err != nil {
			return nil, err
		}
	}
	m.nextL[string(k)] = l
	return l, nil
}

// reserve makes room for n more routes, so that the maps do not grow route by route.
func (m *regionMemo) reserve(n int) {
	if m == nil {
		return
	}
	next, hits := make(map[string]*routev3.Route, len(m.next)+n), make(map[*routev3.Route]bool, len(m.hits)+n)
	maps.Copy(next, m.next)
	maps.Copy(hits, m.hits)
	m.next, m.hits = next, hits
}

// route returns envoyRoute's result for these arguments, from the cache when it holds one.
// scope is routeScope's digest of r, u and limits.
func (m *regionMemo) route(scope []byte, r model.Region, rt model.Route, host string, u model.Upstream, limits []*routev3.RateLimit) (*routev3.Route, error) {
	if m == nil || scope == nil {
		return envoyRoute(r, rt, host, u, limits)
	}
	b := append(m.buf[:0], scope...)
	b = appendString(b, host)
	b, err := appendKey(b, reflect.ValueOf(rt), 0)
	if err != nil {
		return envoyRoute(r, rt, host, u, limits)
	}
	m.buf = b
	if out, ok := m.next[string(b)]; ok {
		return out, nil
	}
	out, ok := m.prev[string(b)]
	if ok {
		m.hits[out] = true
	} else {
		if out, err = envoyRoute(r, rt, host, u, limits); err != nil {
			return nil, err
		}
	}
	m.next[string(b)] = out
	return out, nil
}

// reused reports whether rt came from the cache; nil for no cache. A cached route passed
// validation in the translation that made it: only translations that succeeded whole are
// kept.
func (m *regionMemo) reused() func(*routev3.Route) bool {
	if m == nil {
		return nil
	}
	return func(rt *routev3.Route) bool { return m.hits[rt] }
}

// routeScope digests the arguments of envoyRoute that many routes share: the region, the
// upstream and its rate limits in that region. nil (no caching) if they cannot be encoded.
func (m *regionMemo) routeScope(r model.Region, u model.Upstream, limits []*routev3.RateLimit) []byte {
	if m == nil {
		return nil
	}
	b, err := appendKey(nil, reflect.ValueOf(r), 0)
	if err == nil {
		b, err = appendKey(b, reflect.ValueOf(u), 0)
	}
	if err != nil {
		return nil
	}
	b = binary.AppendUvarint(b, uint64(len(limits)))
	for _, l := range limits {
		enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
		if err != nil {
			return nil
		}
		b = appendString(b, string(enc))
	}
	sum := sha256.Sum256(b)
	return sum[:]
}

// maxKeyDepth bounds appendKey's recursion; the model is a few levels deep.
const maxKeyDepth = 32

var errUnkeyable = errors.New("value cannot be part of a cache key")

// appendKey appends an unambiguous encoding of v: equal encodings mean equal values (for
// the model's plain data: no functions, channels or cycles, which it refuses).
func appendKey(b []byte, v reflect.Value, depth int) ([]byte, error) {
	if depth > maxKeyDepth {
		return nil, errUnkeyable
	}
	switch v.Kind() {
	case reflect.Bool:
		return appendKeyBool(b, v.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return binary.AppendVarint(b, v.Int()), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return binary.AppendUvarint(b, v.Uint()), nil
	case reflect.Float32, reflect.Float64:
		return binary.LittleEndian.AppendUint64(b, math.Float64bits(v.Float())), nil
	case reflect.String:
		return appendString(b, v.String()), nil
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return append(b, 0), nil
		}
		b = append(b, 1)
		if v.Kind() == reflect.Interface {
			b = appendString(b, v.Elem().Type().String())
		}
		return appendKey(b, v.Elem(), depth+1)
	case reflect.Slice:
		if v.IsNil() {
			return append(b, 0), nil
		}
		b = append(b, 1)
		fallthrough
	case reflect.Array:
		b = binary.AppendUvarint(b, uint64(v.Len()))
		var err error
		for i := range v.Len() {
			if b, err = appendKey(b, v.Index(i), depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	case reflect.Struct:
		var err error
		for i := range v.NumField() {
			if b, err = appendKey(b, v.Field(i), depth+1); err != nil {
				return nil, err
			}
		}
		return b, nil
	case reflect.Map:
		if v.IsNil() {
			return append(b, 0), nil
		}
		// Map order is random: encode each entry alone and sort the encodings.
		entries := make([][]byte, 0, v.Len())
		for it := v.MapRange(); it.Next(); {
			e, err := appendKey(nil, it.Key(), depth+1)
			if err == nil {
				e, err = appendKey(e, it.Value(), depth+1)
			}
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
		slices.SortFunc(entries, bytes.Compare)
		b = append(b, 1)
		b = binary.AppendUvarint(b, uint64(len(entries)))
		for _, e := range entries {
			b = append(b, e...)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: %s", errUnkeyable, v.Type())
}

func appendKeyBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}
