package extauthz

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/logging"
	"github.com/llmedge/llmedge/internal/wire"
)

// extauthz inside Envoy: the same Main, started by the dynamic module (extauthz/module)
// in Envoy's process, checks each request on Envoy's worker instead of answering a gRPC
// call. What the module needs from this package lives here, in plain Go, so it is tested
// without a C toolchain.

// EnvOptions are the Options of extauthz inside Envoy for region: the settings of
// `llmedge extauthz`, from the environment variables its flags default to (LLMEDGE_XDS,
// LLMEDGE_KEYS_DIR, LLMEDGE_REDIS, ...), since a module has no command line. region comes
// from the filter's config (the control plane's); LLMEDGE_REGION, when set, must agree.
// It serves no gRPC (NoGRPC): the module checks requests and sets retries' keys itself,
// so LLMEDGE_GRPC_LISTEN and LLMEDGE_TLS_* (the gRPC listener's) are not read; any of
// them left set is logged as unused.
func EnvOptions(region string, getenv func(string) string, stderr io.Writer) (Options, error) {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	var errs []error
	if region == "" {
		errs = append(errs, errors.New("the filter config names no region"))
	}
	if r := getenv("LLMEDGE_REGION"); r != "" && r != region {
		errs = append(errs, fmt.Errorf("LLMEDGE_REGION is %q, but this Envoy's config is for region %q", r, region))
	}
	for _, k := range []string{"LLMEDGE_XDS", "LLMEDGE_KEYS_DIR"} {
		if getenv(k) == "" {
			errs = append(errs, fmt.Errorf("%s is not set", k))
		}
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(env("LLMEDGE_LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LLMEDGE_LOG_LEVEL %q: want debug, info, warn or error", getenv("LLMEDGE_LOG_LEVEL")))
	}
	f := env("LLMEDGE_LOG_FORMAT", "json")
	log, err := logging.New(stderr, f, lv)
	if err != nil {
		errs = append(errs, fmt.Errorf("LLMEDGE_LOG_FORMAT %q: %w", f, err))
	}
	var poll time.Duration
	if v := getenv("LLMEDGE_KEYS_POLL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("LLMEDGE_KEYS_POLL %q: want a positive duration such as 5s", v))
		}
		poll = d
	}
	if err := errors.Join(errs...); err != nil {
		return Options{}, fmt.Errorf("extauthz in Envoy: %w", err)
	}
	o := Options{
		Region:       region,
		NodeID:       getenv("LLMEDGE_NODE_ID"),
		XDSServer:    getenv("LLMEDGE_XDS"),
		NoGRPC:       true,
		HTTPAddress:  env("LLMEDGE_HTTP_LISTEN", "127.0.0.1:10200"),
		KeysDir:      getenv("LLMEDGE_KEYS_DIR"),
		RedisAddress: getenv("LLMEDGE_REDIS"),
		StateDir:     getenv("LLMEDGE_STATE_DIR"),
		KeysPoll:     poll,
		Logger:       log.With("component", "extauthz"),
	}
	o.XDSTLS.Cert, o.XDSTLS.Key, o.XDSTLS.CA = getenv("LLMEDGE_XDS_TLS_CERT"), getenv("LLMEDGE_XDS_TLS_KEY"), getenv("LLMEDGE_XDS_TLS_CA")
	// The gRPC listener's settings: one left in Envoy's environment (a mutual-TLS setup
	// carried over from extauthz as a process, say) protects nothing here, so say so.
	for _, k := range []string{"LLMEDGE_GRPC_LISTEN", "LLMEDGE_TLS_CERT", "LLMEDGE_TLS_KEY", "LLMEDGE_TLS_CLIENT_CA"} {
		if v := getenv(k); v != "" {
			o.Logger.Warn(k+" is set but unused: extauthz inside Envoy serves no gRPC (the module checks requests and sets retries' keys itself)", k, v)
		}
	}
	return o, nil
}

// CheckedHeader reports whether the check reads a request header (name in lower case):
// the credential headers and llmedge's internal ones, the headers Envoy's ext_authz call
// carries (controlplane/translate), so the two transports see the same request.
func CheckedHeader(name string) bool {
	if strings.HasPrefix(name, wire.InternalHeaderPrefix) {
		return true
	}
	for _, h := range wire.CredentialHeaders {
		if name == h {
			return true
		}
	}
	return false
}

// WithoutQueryParams is path with the query parameters named (raw, as they are spelled
// in the request: decide's RemoveQueryParams) removed; the others keep their order and
// spelling. A query left empty is dropped with its "?".
func WithoutQueryParams(path string, names []string) string {
	base, query, ok := strings.Cut(path, "?")
	if !ok || len(names) == 0 {
		return path
	}
	var kept []string
	for part := range strings.SplitSeq(query, "&") {
		name, _, _ := strings.Cut(part, "=")
		drop := false
		for _, n := range names {
			if name == n {
				drop = true
				break
			}
		}
		if !drop && part != "" {
			kept = append(kept, part)
		}
	}
	if len(kept) == 0 {
		return base
	}
	return base + "?" + strings.Join(kept, "&")
}
