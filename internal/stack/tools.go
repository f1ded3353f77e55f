package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The third-party programs `make tools` installs under <repo>/.tools/bin.
const (
	ToolEnvoy       = "envoy"
	ToolRatelimit   = "ratelimit"
	ToolRedisServer = "redis-server"
)

// toolEnv names the variable that overrides one tool's path.
var toolEnv = map[string]string{
	ToolEnvoy:       "LLMEDGE_ENVOY",
	ToolRatelimit:   "LLMEDGE_RATELIMIT",
	ToolRedisServer: "LLMEDGE_REDIS_SERVER",
}

// RepoRoot returns the directory holding go.mod, searching upwards from the working
// directory (go test runs each package in its own directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("stack: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// ToolPath returns the path of one of the Tool* programs: $LLMEDGE_ENVOY (and so on) if
// set, else $LLMEDGE_TOOLS/bin/<name>, else <repo>/.tools/bin/<name>. It fails, naming
// `make tools`, when that is not an executable file.
func ToolPath(name string) (string, error) {
	envVar, ok := toolEnv[name]
	if !ok {
		return "", fmt.Errorf("stack: unknown tool %q", name)
	}
	path := os.Getenv(envVar)
	if path == "" {
		dir := os.Getenv("LLMEDGE_TOOLS") // set by the Makefile
		if dir == "" {
			root, err := RepoRoot()
			if err != nil {
				return "", fmt.Errorf("stack: locating %s: %w; run `make tools`", name, err)
			}
			dir = filepath.Join(root, ".tools")
		}
		path = filepath.Join(dir, "bin", name)
	}
	fi, err := os.Stat(path) // follows the symlinks tools.sh creates
	if err != nil {
		return "", fmt.Errorf("stack: %s not found at %s (%v); run `make tools` or set %s", name, path, err, envVar)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("stack: %s at %s is not an executable file; run `make tools` or set %s", name, path, envVar)
	}
	return path, nil
}

// Paths are the programs a stack runs. Empty fields are filled by FindTools and
// BuildBinaries; a Start function fails clearly when the program it needs is missing.
type Paths struct {
	Envoy, Ratelimit, RedisServer string
	Llmedge, Fakellm              string
	// Module is libllmedge.so, extauthz as a dynamic module for Envoy (extauthz/module);
	// Envoy finds it through ENVOY_DYNAMIC_MODULES_SEARCH_PATH, its directory.
	Module string
}

// FindTools fills the empty tool paths (Envoy, Ratelimit, RedisServer) with ToolPath.
func (p *Paths) FindTools() error {
	var errs []error
	for name, field := range map[string]*string{ToolEnvoy: &p.Envoy, ToolRatelimit: &p.Ratelimit, ToolRedisServer: &p.RedisServer} {
		if *field != "" {
			continue
		}
		path, err := ToolPath(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		*field = path
	}
	return errors.Join(errs...)
}

// ModuleFile is the dynamic module's file name (Envoy loads lib<name>.so).
const ModuleFile = "libllmedge.so"

// BinariesIn sets Llmedge, Fakellm and Module to <dir>/llmedge, <dir>/fakellm and
// <dir>/libllmedge.so, failing if one is not there (run `make build`).
func (p *Paths) BinariesIn(dir string) error {
	var errs []error
	for name, field := range map[string]*string{"llmedge": &p.Llmedge, "fakellm": &p.Fakellm, ModuleFile: &p.Module} {
		path := filepath.Join(dir, name)
		if fi, err := os.Stat(path); err != nil || fi.IsDir() {
			errs = append(errs, fmt.Errorf("stack: %s not found in %s; run `make build` or set LLMEDGE_BIN_DIR", name, dir))
			continue
		}
		*field = path
	}
	return errors.Join(errs...)
}

// BuildBinaries compiles cmd/llmedge, cmd/fakellm and the dynamic module of the
// repository at root into dir and points Llmedge, Fakellm and Module at them.
func (p *Paths) BuildBinaries(ctx context.Context, root, dir string) error {
	for name, field := range map[string]*string{"llmedge": &p.Llmedge, "fakellm": &p.Fakellm} {
		out := filepath.Join(dir, name)
		if err := GoBuild(ctx, root, "./cmd/"+name, out); err != nil {
			return err
		}
		*field = out
	}
	out := filepath.Join(dir, ModuleFile)
	if err := GoBuildModule(ctx, root, out); err != nil {
		return err
	}
	p.Module = out
	return nil
}

// GoBuildModule compiles extauthz/module of the module at root into the shared object
// out. It needs cgo and a C compiler (make tools installs gcc).
func GoBuildModule(ctx context.Context, root, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-buildmode=c-shared", "-o", out, "./extauthz/module")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("stack: go build -buildmode=c-shared ./extauthz/module: %w\n%s", err, b)
	}
	// The C header cgo writes next to it is of no use to Envoy.
	_ = os.Remove(strings.TrimSuffix(out, ".so") + ".h")
	return nil
}

// GoBuild compiles the package pkg (e.g. ./cmd/llmedge) of the module at root into out.
func GoBuild(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("stack: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

func need(what, path string) error {
	if path == "" {
		return fmt.Errorf("stack: no path for %s (Paths.FindTools or Paths.BinariesIn)", what)
	}
	return nil
}
