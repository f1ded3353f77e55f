package e2e

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	stk "github.com/llmedge/llmedge/internal/stack"
)

// TestMakeRunKeyVaultAnswersOnlyItsOwnEnvoys: under `make run` the hops that carry or
// guard secrets (xDS, which carries the caller policy; ratelimit and Redis, which hold the
// quotas) are unix sockets in a directory only the edge's user can open, and extauthz,
// which answers with provider keys, is inside each Envoy with no socket at all: (a) no
// process of the stack listens on a TCP port for them; (b) a process of another user
// cannot connect to any of them; (c) the real Envoy still serves requests with the
// provider key injected.
func TestMakeRunKeyVaultAnswersOnlyItsOwnEnvoys(t *testing.T) {
	t.Parallel()
	m := startMakeRun(t)
	var facts struct {
		Token        string `json:"token"`
		Sockets      string `json:"sockets"`
		FakeUpstream string `json:"fake_upstream"`
		Regions      map[string]struct {
			Edge, ExtAuthz, Ratelimit string
			ExtAuthzHealth            string `json:"extauthz_health"`
		} `json:"regions"`
	}
	b, err := os.ReadFile(filepath.Join(m.runDir, "edge.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &facts); err != nil {
		t.Fatal(err)
	}
	sock := stk.Sockets{Dir: facts.Sockets}
	regions := stk.LocalRegions()
	for _, r := range regions {
		if facts.Regions[r].ExtAuthz != "" || facts.Regions[r].Ratelimit != stk.Unix(sock.Ratelimit(r)) {
			t.Errorf("edge.json region %s: extauthz %q, ratelimit %s; want no extauthz socket (it is inside Envoy) and ratelimit's in %s", r, facts.Regions[r].ExtAuthz, facts.Regions[r].Ratelimit, sock.Dir)
		}
	}

	t.Run("only edge, admin and health ports listen on TCP, on loopback", func(t *testing.T) {
		want := map[int]bool{}
		for _, p := range m.ports {
			want[p] = true
		}
		listening := tcpListeners(t)
		got := map[int]bool{}
		for pid, cmdline := range childrenOf(t, m.p.Pid()) {
			for _, l := range socketInodes(t, pid) {
				a, ok := listening[l]
				if !ok {
					continue
				}
				got[a.Port] = true
				if !want[a.Port] {
					t.Errorf("%s (pid %d) listens on TCP %s, which is none of make run's edge, admin or health ports", cmdline, pid, a)
				}
				if !a.IP.IsLoopback() {
					t.Errorf("%s (pid %d) listens on %s, off loopback", cmdline, pid, a)
				}
			}
		}
		// The control: the inode mapping finds every port make run does have.
		for name, p := range m.ports {
			if !got[p] {
				t.Errorf("LLMEDGE_%s=%d: no process of the stack listens there (the /proc mapping is broken?)", name, p)
			}
		}
	})

	t.Run("another user cannot connect to any socket", func(t *testing.T) {
		fi, err := os.Stat(sock.Dir)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("socket directory %s: %v %v, want mode 0700", sock.Dir, fi, err)
		}
		// Every socket of the stack but extauthz's: inside Envoy it serves no gRPC.
		all := slices.DeleteFunc(sock.All(regions), func(s string) bool {
			return slices.ContainsFunc(regions, func(r string) bool { return s == sock.ExtAuthz(r) })
		})
		if len(all) != 4 {
			t.Fatalf("sockets %v, want xds, redis and ratelimit per region", all)
		}
		for _, s := range all {
			if fi, err := os.Stat(s); err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Fatalf("%s: %v, %v; want a socket", s, fi, err)
			}
		}
		entries, err := os.ReadDir(sock.Dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if p := filepath.Join(sock.Dir, e.Name()); !slices.Contains(all, p) {
				t.Errorf("%s is in the socket directory: want only %v (no socket hands out provider keys)", p, all)
			}
		}
		if os.Geteuid() != 0 {
			t.Skip("needs root to start a process as another user")
		}
		python := systemPython()
		if python == "" {
			t.Skip("no system python3 to probe the sockets with")
		}
		for _, s := range all {
			if out, err := connectAs(t, python, s, uint32(os.Geteuid())); err != nil || !strings.Contains(out, "connected") {
				t.Fatalf("the probe cannot connect to %s even as the edge's user: %v\n%s", s, err, out)
			}
			out, err := connectAs(t, python, s, 65534)
			if err == nil || strings.Contains(out, "connected") {
				t.Errorf("uid 65534 connected to %s:\n%s", s, out)
			}
			if !strings.Contains(out, "PermissionError") {
				t.Errorf("uid 65534 on %s: want a permission error (EACCES), got:\n%s", s, out)
			}
		}
	})

	t.Run("extauthz runs inside each Envoy by default", func(t *testing.T) {
		if !strings.Contains(m.p.Log(), "extauthz runs inside each Envoy") {
			t.Errorf("the banner does not say extauthz runs inside Envoy:\n%s", m.p.Log())
		}
		for pid, cmdline := range childrenOf(t, m.p.Pid()) {
			if strings.Contains(cmdline, " extauthz ") {
				t.Errorf("make run started an extauthz process (pid %d: %s); by default it runs inside Envoy", pid, cmdline)
			}
		}
		// Its health port answers from the region's Envoy.
		for _, r := range regions {
			resp, err := http.Get(facts.Regions[r].ExtAuthzHealth + "/readyz")
			if err != nil {
				t.Fatalf("region %s extauthz /readyz: %v", r, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("region %s extauthz /readyz: %d", r, resp.StatusCode)
			}
		}
	})

	t.Run("the real Envoy serves with the key injected", func(t *testing.T) {
		for _, r := range regions {
			resp, body := post(t, facts.Regions[r].Edge+"/openai/v1/chat/completions",
				`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}`,
				map[string]string{"authorization": "Bearer " + facts.Token})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("region %s: status %d: %s", r, resp.StatusCode, body)
			}
		}
		resp, err := http.Get(facts.FakeUpstream + "/_fake/requests")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var reqs []struct{ Header http.Header }
		if err := json.NewDecoder(resp.Body).Decode(&reqs); err != nil {
			t.Fatal(err)
		}
		if len(reqs) < len(regions) {
			t.Fatalf("the fake upstream recorded %d requests, want %d", len(reqs), len(regions))
		}
		for _, rq := range reqs {
			if got := rq.Header.Get("Authorization"); got != "Bearer demo-key-for-the-fake-upstream" {
				t.Errorf("upstream saw Authorization %q, want the demo provider key", got)
			}
		}
	})
	m.stop(t)
}

// tcpListeners reads /proc/net/tcp and tcp6: the listening sockets by inode.
func tcpListeners(t *testing.T) map[string]*net.TCPAddr {
	t.Helper()
	out := map[string]*net.TCPAddr{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		file, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(file)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" { // TCP_LISTEN
				continue
			}
			host, port, _ := strings.Cut(fields[1], ":")
			raw, err := hex.DecodeString(host)
			pn, err2 := strconv.ParseUint(port, 16, 16)
			if err != nil || err2 != nil || len(raw)%4 != 0 {
				t.Fatalf("%s: cannot read %q", f, fields[1])
			}
			// The kernel prints each 32-bit word in host (little-endian) order.
			for i := 0; i < len(raw); i += 4 {
				slices.Reverse(raw[i : i+4])
			}
			out[fields[9]] = &net.TCPAddr{IP: net.IP(raw), Port: int(pn)}
		}
		file.Close()
	}
	return out
}

// socketInodes returns the inodes of the sockets a process holds open.
func socketInodes(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	var out []string
	for _, e := range entries {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if inode, ok := strings.CutPrefix(link, "socket:["); ok {
			out = append(out, strings.TrimSuffix(inode, "]"))
		}
	}
	return out
}
