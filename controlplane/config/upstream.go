package config

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmedge/llmedge/controlplane/model"
)

func validateUpstream(p, name string, u Upstream, regions map[string]Region, c *collector, cfg *model.Config) (model.Upstream, bool) {
	n := len(c.errs)
	out := model.Upstream{Name: name}
	if u.URL == "" {
		c.add(p+".url", "required (for example https://api.openai.com)")
	} else if pu, err := url.Parse(u.URL); err != nil || !pu.IsAbs() || pu.Host == "" {
		c.add(p+".url", "must be an absolute URL such as https://api.openai.com")
	} else if pu.Scheme != "https" && pu.Scheme != "http" {
		c.add(p+".url", "scheme must be https (or http for local test upstreams), not %q", pu.Scheme)
	} else {
		// Credentials or a query are reported, but the scheme and host are still read so that
		// the tls settings are checked in the same run.
		if pu.User != nil {
			c.add(p+".url", "must not carry credentials; upstream keys come from the secret store")
		}
		if pu.RawQuery != "" || pu.Fragment != "" {
			c.add(p+".url", "must not have a query or fragment")
		}
		out.Scheme = pu.Scheme
		out.Host = strings.ToLower(pu.Hostname())
		port := pu.Port()
		def := "443"
		if pu.Scheme == "http" {
			def = "80"
		}
		if port == "" {
			port = def
		}
		pn, err := strconv.ParseUint(port, 10, 16)
		if err != nil || pn == 0 {
			c.add(p+".url", "port must be 1-65535")
		}
		out.Port = uint32(pn)
		out.Authority = out.Host
		if strings.Contains(out.Host, ":") {
			out.Authority = "[" + out.Host + "]"
		}
		if port != def {
			out.Authority += ":" + port
		}
		out.BasePath = strings.TrimSuffix(pu.EscapedPath(), "/")
		if _, err := netip.ParseAddr(out.Host); err != nil && !hostnameRE.MatchString(out.Host) {
			c.add(p+".url", "host %q is not a valid DNS name or IP address", out.Host)
		}
	}
	out.ConnectHost, out.ConnectPort = out.Host, out.Port
	if u.Endpoint != "" {
		if h, port, err := splitHostPort(u.Endpoint); err != nil {
			c.add(p+".endpoint", "%v (where to connect instead of resolving the URL's host)", err)
		} else {
			out.ConnectHost, out.ConnectPort = h, port
		}
	}

	tlsSet := u.TLS.SNI != "" || u.TLS.CAFile != "" || u.TLS.Verify != nil
	if out.Scheme == "http" {
		if tlsSet {
			c.add(p+".tls", "only applies to https URLs")
		}
		if !isLoopback(out.ConnectHost) {
			cfg.Warnings = append(cfg.Warnings, p+".url: plain http to a non-loopback host; use https for real providers")
		}
	}
	if out.Scheme == "https" {
		t := &model.TLS{SNI: out.Host, CAFile: DefaultCAFile, Verify: true}
		if u.TLS.SNI != "" {
			sni := strings.ToLower(u.TLS.SNI)
			if _, err := netip.ParseAddr(sni); err == nil || !hostnameRE.MatchString(sni) || strings.HasPrefix(sni, "*.") {
				c.add(p+".tls.sni", "must be a DNS name")
			}
			t.SNI = sni
		} else if _, err := netip.ParseAddr(out.Host); err == nil {
			t.SNI = "" // SNI cannot carry an IP address
		}
		if u.TLS.CAFile != "" {
			if !path.IsAbs(u.TLS.CAFile) {
				c.add(p+".tls.ca_file", "must be an absolute path as seen by Envoy")
			}
			t.CAFile = u.TLS.CAFile
		}
		if u.TLS.Verify != nil {
			t.Verify = *u.TLS.Verify
		}
		if !t.Verify {
			cfg.Warnings = append(cfg.Warnings, p+".tls.verify: false; the upstream's certificate is not checked")
		} else if t.SNI == "" {
			c.add(p+".tls.sni", "required when the URL host is an IP address and verify is on (the certificate is checked against it)")
		}
		out.TLS = t
	}

	switch u.Protocol {
	case "", string(model.ProtocolAuto):
		out.Protocol = model.ProtocolAuto
	case string(model.ProtocolHTTP1), string(model.ProtocolHTTP2):
		out.Protocol = model.Protocol(u.Protocol)
	default:
		c.add(p+".protocol", "must be auto, http1 or http2, not %q", u.Protocol)
	}

	out.ConnectTimeout = duration(p+".connect_timeout", u.ConnectTimeout, DefaultConnectTimeout, time.Minute, c)
	out.ResponseTimeout = duration(p+".response_timeout", u.ResponseTimeout, DefaultResponseTimeout, time.Hour, c)
	out.StreamIdleTimeout = duration(p+".stream_idle_timeout", u.StreamIdleTimeout, DefaultStreamIdleTimeout, time.Hour, c)

	if len(u.AllowedRegions) == 0 {
		c.add(p+".allowed_regions", "required: list the regions whose provider terms allow serving this upstream (defined: %s)", strings.Join(sortedKeys(regions), ", "))
	}
	seen := map[string]bool{}
	for i, r := range u.AllowedRegions {
		fp := fmt.Sprintf("%s.allowed_regions[%d]", p, i)
		if _, ok := regions[r]; !ok {
			c.add(fp, "unknown region %q (defined: %s)", r, strings.Join(sortedKeys(regions), ", "))
		} else if seen[r] {
			c.add(fp, "region %q is listed twice", r)
		}
		seen[r] = true
	}
	out.AllowedRegions = slices.Sorted(slices.Values(u.AllowedRegions))
	out.ForwardClientIP, out.ForwardRequestID = u.ForwardClientIP, u.ForwardRequestID
	validateKeyInjection(p, u, &out, c)
	out.Limits = validateLimits(p, u.Limits, nil, false, c)
	out.Retries = validateRetries(p+".retries", u.Retries, c)
	out.Outlier = validateOutlier(p+".outlier_detection", u.OutlierDetection, c)
	out.CircuitBreaker = validateCircuitBreaker(p+".circuit_breaker", u.CircuitBreaker, c)
	return out, len(c.errs) == n
}
