package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/llmedge/llmedge/internal/certs"
	"github.com/llmedge/llmedge/internal/transport"
)

const certsUsage = `usage:
  llmedge certs init  --dir DIR [--days 3650]
  llmedge certs issue --dir DIR --component envoy|extauthz|ratelimit|controlplane [--region NAME]
                      [--dns NAME ...] [--ip ADDR ...] [--days 90] [--renew [--renew-before-days 30]]
`

// listFlag collects a repeatable flag; commas separate values too.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// runCerts is the operator's CA for the internal hops. It prints file paths and dates only:
// private keys go to 0600 files and never to the terminal.
func runCerts(args []string, stdout, stderr io.Writer, now time.Time) error {
	if len(args) == 0 || (args[0] != "init" && args[0] != "issue") {
		fmt.Fprint(stderr, certsUsage)
		return errUsage
	}
	fs := newFlags("certs "+args[0], stderr)
	dir := fs.String("dir", "", "the CA directory: ca.pem, ca-key.pem (0600) and the issued certificates (required)")
	if args[0] == "init" {
		days := fs.Int("days", int(certs.DefaultCAValidity/(24*time.Hour)), "CA validity in days")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			fmt.Fprintln(stderr, "--dir is required")
			return errUsage
		}
		res, err := certs.Init(*dir, time.Duration(*days)*24*time.Hour, now)
		if err != nil {
			return err
		}
		if !res.Created {
			fmt.Fprintf(stdout, "CA already in %s (valid until %s); left unchanged\n", *dir, res.NotAfter.Format(time.RFC3339))
			return nil
		}
		fmt.Fprintf(stdout, "CA certificate: %s (give it to every component as its CA bundle)\nCA key:         %s (mode 0600; keep it off the servers)\nvalid until %s\n",
			res.Cert, res.Key, res.NotAfter.Format(time.RFC3339))
		return nil
	}
	region := fs.String("region", "", "the region, as named in the routes YAML (required except for the controlplane)")
	component := fs.String("component", "", "envoy, extauthz, ratelimit or controlplane (required)")
	var dns, ips listFlag
	fs.Var(&dns, "dns", "a DNS name clients dial this component by (repeatable); makes it a server certificate too")
	fs.Var(&ips, "ip", "an IP address clients dial this component by (repeatable); makes it a server certificate too")
	days := fs.Int("days", int(certs.DefaultValidity/(24*time.Hour)), "validity in days")
	renew := fs.Bool("renew", false, "replace an existing certificate when it is due (expires within --renew-before-days, other CA or names); otherwise leave it: safe to run from a timer")
	renewBefore := fs.Int("renew-before-days", int(certs.DefaultRenewBefore/(24*time.Hour)), "with --renew: renew when the certificate expires within this many days")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	var missing []string
	if *dir == "" {
		missing = append(missing, "--dir")
	}
	if *component == "" {
		missing = append(missing, "--component")
	}
	if *region == "" && *component != transport.ComponentControlPlane {
		missing = append(missing, "--region")
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "%s required\n%s", strings.Join(missing, ", "), certsUsage)
		return errUsage
	}
	r := certs.Request{
		Identity:    transport.Identity{Region: *region, Component: *component},
		DNS:         dns,
		Validity:    time.Duration(*days) * 24 * time.Hour,
		Renew:       *renew,
		RenewBefore: time.Duration(*renewBefore) * 24 * time.Hour,
	}
	if *days <= 0 || *renewBefore < 0 {
		return errors.New("--days must be positive and --renew-before-days not negative")
	}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q: not an IP address", s)
		}
		r.IPs = append(r.IPs, ip)
	}
	res, err := certs.Issue(*dir, r, now)
	if err != nil {
		return fmt.Errorf("%s: %w", r.Identity.Component, err)
	}
	if !res.Issued {
		fmt.Fprintf(stdout, "%s: %s\n", res.Cert, res.Why)
		return nil
	}
	fmt.Fprintf(stdout, "certificate: %s\nkey:         %s (mode 0600)\nidentity:    %s\nvalid until  %s (%s)\n",
		res.Cert, res.Key, r.Identity, res.NotAfter.Format(time.RFC3339), res.Why)
	return nil
}
