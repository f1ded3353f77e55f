// Command fakellm serves the fake OpenAI/Anthropic/Gemini upstream over
// plain HTTP and/or HTTPS for the local demo, benchmarks and e2e tests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/llmedge/llmedge/internal/fakellm"
)

const defaultTLSNames = "localhost,127.0.0.1,api.openai.test,api.anthropic.test,generativelanguage.googleapis.test"

// shutdownGrace bounds how long in-flight (possibly slow, streaming)
// requests may delay exit before connections are closed outright.
const shutdownGrace = 5 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakellm:", err)
		os.Exit(1)
	}
}

// run starts the listeners, prints one "LISTEN <scheme> <addr>" line per
// listener to stdout once it is bound (so harnesses can use port 0), and
// serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("fakellm", flag.ContinueOnError)
	fl.SetOutput(stderr)
	listen := fl.String("listen", "127.0.0.1:8090", "plain HTTP listen address (HTTP/1.1 and h2c); empty disables")
	tlsListen := fl.String("tls-listen", "", "HTTPS listen address (h2 and http/1.1 via ALPN); empty disables")
	tlsDir := fl.String("tls-dir", filepath.Join(".run", "fakellm-tls"), "directory holding ca.pem, server.pem, server-key.pem (created when missing)")
	tlsNames := fl.String("tls-names", defaultTLSNames, "comma-separated DNS names and IPs for the server certificate")
	chunks := fl.Int("chunks", 5, "chunks (words) per answer")
	interval := fl.Duration("chunk-interval", 20*time.Millisecond, "pause between streamed chunks; 0 for none")
	name := fl.String("name", "", "value of the x-fake-upstream response header")
	logLevel := fl.String("log-level", "info", "debug, info, warn or error")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fl.Args())
	}
	if *listen == "" && *tlsListen == "" {
		return errors.New("both --listen and --tls-listen are empty; nothing to serve")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	opts := fakellm.Options{Chunks: *chunks, ChunkInterval: *interval, Name: *name, Logger: log}
	// Options reads zero as "default"; on the command line zero means zero.
	if opts.Chunks == 0 {
		opts.Chunks = -1
	}
	if opts.ChunkInterval == 0 {
		opts.ChunkInterval = -1
	}
	handler := fakellm.New(opts)

	var servers []*http.Server
	errc := make(chan error, 2)
	serve := func(srv *http.Server, ln net.Listener, scheme string) {
		servers = append(servers, srv)
		log.Info("listening", "scheme", scheme, "addr", ln.Addr().String(), "name", *name)
		fmt.Fprintf(stdout, "LISTEN %s %s\n", scheme, ln.Addr())
		go func() {
			var err error
			if srv.TLSConfig != nil {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s server: %w", scheme, err)
			}
		}()
	}
	// Listeners already serving must not outlive an error setting up the next.
	defer func() {
		for _, srv := range servers {
			_ = srv.Close()
		}
	}()

	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		protos := new(http.Protocols)
		protos.SetHTTP1(true)
		// h2c lets Envoy reach the fake over HTTP/2 without TLS.
		protos.SetUnencryptedHTTP2(true)
		serve(&http.Server{Handler: handler, Protocols: protos, ReadHeaderTimeout: 10 * time.Second}, ln, "http")
	}
	if *tlsListen != "" {
		pki, err := fakellm.LoadOrCreatePKI(*tlsDir, strings.Split(*tlsNames, ","))
		if err != nil {
			return err
		}
		cfg, err := pki.TLSConfig()
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", *tlsListen)
		if err != nil {
			return err
		}
		log.Info("tls", "ca", filepath.Join(*tlsDir, "ca.pem"), "names", *tlsNames)
		serve(&http.Server{Handler: handler, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second}, ln, "https")
	}

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("shutdown", "err", err)
		}
	}
	return serveErr
}
