package extauthz

import (
	"io"
	"strings"
	"testing"
)

func TestEnvOptions(t *testing.T) {
	env := map[string]string{
		"LLMEDGE_XDS": "unix:/run/llmedge/xds.sock", "LLMEDGE_KEYS_DIR": "/keys", "LLMEDGE_REDIS": "unix:/run/llmedge/redis.sock",
		"LLMEDGE_GRPC_LISTEN": "unix:/run/llmedge/extauthz-hk.sock", "LLMEDGE_STATE_DIR": "/state", "LLMEDGE_XDS_TLS_CA": "/ca.pem",
		"LLMEDGE_TLS_CERT": "/tls/cert.pem", "LLMEDGE_TLS_CLIENT_CA": "/tls/ca.pem",
	}
	var log strings.Builder
	o, err := EnvOptions("hk", func(k string) string { return env[k] }, &log)
	if err != nil {
		t.Fatal(err)
	}
	if o.Region != "hk" || o.XDSServer != env["LLMEDGE_XDS"] || o.KeysDir != "/keys" || o.RedisAddress != env["LLMEDGE_REDIS"] ||
		o.HTTPAddress != "127.0.0.1:10200" || o.StateDir != "/state" || o.XDSTLS.CA != "/ca.pem" {
		t.Fatalf("options %+v do not follow the environment", o)
	}
	// Inside Envoy nothing calls extauthz's gRPC: it serves none, and says so of each of
	// its listener's settings left over, and of no other.
	if !o.NoGRPC || o.GRPCAddress != "" || o.TLS.Cert != "" || o.TLS.CA != "" {
		t.Errorf("NoGRPC %v, GRPCAddress %q, TLS %+v: want no gRPC inside Envoy", o.NoGRPC, o.GRPCAddress, o.TLS)
	}
	for _, k := range []string{"LLMEDGE_GRPC_LISTEN", "LLMEDGE_TLS_CERT", "LLMEDGE_TLS_CLIENT_CA"} {
		if !strings.Contains(log.String(), k+" is set but unused") {
			t.Errorf("log %q does not say %s is unused", log.String(), k)
		}
	}
	if n := strings.Count(log.String(), "is set but unused"); n != 3 {
		t.Errorf("%d warnings of unused settings, want 3: %s", n, log.String())
	}

	env = map[string]string{"LLMEDGE_REGION": "sg", "LLMEDGE_LOG_LEVEL": "loud"}
	_, err = EnvOptions("hk", func(k string) string { return env[k] }, io.Discard)
	for _, want := range []string{`LLMEDGE_REGION is "sg"`, "LLMEDGE_XDS is not set", "LLMEDGE_KEYS_DIR is not set", `LLMEDGE_LOG_LEVEL "loud"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

func TestCheckedHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"authorization": true, "x-api-key": true, "x-goog-api-key": true, "llmedge-token": true,
		"x-llmedge-caller": true, "content-type": false, ":path": false, "x-llmedgex": false,
	} {
		if got := CheckedHeader(name); got != want {
			t.Errorf("CheckedHeader(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestWithoutQueryParams(t *testing.T) {
	for _, c := range []struct {
		path  string
		names []string
		want  string
	}{
		{"/v1beta/models/m:generate?key=t&alt=sse", []string{"key"}, "/v1beta/models/m:generate?alt=sse"},
		{"/v1/x?alt=sse&key=a&%6Bey=b&key", []string{"key", "%6Bey"}, "/v1/x?alt=sse"},
		{"/v1/x?key=a", []string{"key"}, "/v1/x"},
		{"/v1/x?a=1&&b=2", []string{"key"}, "/v1/x?a=1&b=2"},
		{"/v1/x", []string{"key"}, "/v1/x"},
		{"/v1/x?key=a", nil, "/v1/x?key=a"},
	} {
		if got := WithoutQueryParams(c.path, c.names); got != c.want {
			t.Errorf("WithoutQueryParams(%q, %q) = %q, want %q", c.path, c.names, got, c.want)
		}
	}
}

// PolicyIn, which the module holds Envoy's first filter config on, closes once a policy is
// in force, and only then.
func TestPolicyInClosesWithThePolicy(t *testing.T) {
	m := newMain(t)
	select {
	case <-m.PolicyIn():
		t.Fatal("PolicyIn closed before any policy")
	default:
	}
	if err := m.apply("v1", policyResource(t, "hk", "llme_policy_in_test_token_aaaaaaaaaaaaaaaaaaaa")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.PolicyIn():
	default:
		t.Fatal("PolicyIn still open with a policy in force")
	}
	if err := m.apply("v2", policyResource(t, "hk", "llme_policy_in_test_token_aaaaaaaaaaaaaaaaaaaa")); err != nil {
		t.Fatal(err) // a second policy must not close it again (a panic)
	}
}
