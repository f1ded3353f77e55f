// Package proto_test checks that the generated Go code committed under proto/ matches the
// .proto files (scripts/proto.sh --check), so `make test` fails on drift.
package proto_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestGeneratedCodeUpToDate(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	tools := os.Getenv("LLMEDGE_TOOLS")
	if tools == "" {
		tools = filepath.Join(root, ".tools")
	}
	// Fail, never skip: a missing protoc must not let drift through silently.
	if _, err := os.Stat(filepath.Join(tools, "bin", "protoc")); err != nil {
		if _, err := exec.LookPath("protoc"); err != nil {
			t.Fatalf("protoc not found in %s/bin or on PATH: run `make tools`", tools)
		}
	}
	touchInputs(t, root)

	cmd := exec.Command("bash", filepath.Join(root, "scripts", "proto.sh"), "--check")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/proto.sh --check: %v\n%s\nRegenerate with `make proto` (protoc comes from `make tools`).", err, out)
	}
	t.Logf("%s", out)
}

// touchInputs reads every file the check depends on. go test caches a passing result keyed
// on the files the test process itself opens, not those a child process reads, so without
// this a plain `go test ./...` could replay a stale pass after a .proto edit.
func touchInputs(t *testing.T, root string) {
	t.Helper()
	for _, f := range []string{"go.mod", "scripts/proto.sh"} {
		if _, err := os.ReadFile(filepath.Join(root, f)); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.WalkDir(filepath.Join(root, "proto"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		_, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
