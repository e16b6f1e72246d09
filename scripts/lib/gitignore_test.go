package lib

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestGitignoreKeepsEnvFilesOut: the README tells users to write secrets
// into relay.env (docker --env-file); that file and the usual dotenv names
// must never be committed by a `git add .`, while no committed file may be
// ignored by mistake.
func TestGitignoreKeepsEnvFilesOut(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("git is missing")
		}
		t.Skip("git is missing")
	}
	if err := exec.Command("git", "rev-parse", "--is-inside-work-tree").Run(); err != nil {
		// CI runs in a clone: a CI without one would drop this check unseen.
		if os.Getenv("CI") == "true" {
			t.Fatal("not in a git checkout: the ignore rules cannot be checked")
		}
		t.Skip("not in a git checkout: the ignore rules cannot be checked")
	}
	secrets := []string{"relay.env", "coap-server.env", ".env", ".env.local", "relay/.env", "scripts/dev.env"}
	for _, name := range secrets {
		// check-ignore exits 0 when the path is ignored, 1 when it is not.
		if err := exec.Command("git", "-C", "../..", "check-ignore", "-q", "--no-index", "--", name).Run(); err != nil {
			t.Errorf("%s is not ignored: a `git add .` would commit its secrets", name)
		}
	}
	for _, name := range []string{".env.example", "internal/envconf/envconf.go", "scripts/lib/common.sh"} {
		if err := exec.Command("git", "-C", "../..", "check-ignore", "-q", "--no-index", "--", name).Run(); err == nil {
			t.Errorf("%s is ignored", name)
		}
	}
	ignored, err := exec.Command("git", "-C", "../..", "ls-files", "--cached", "--ignored", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	if s := strings.TrimSpace(string(ignored)); s != "" {
		t.Errorf("committed files that .gitignore ignores (a later change to them is easy to miss):\n%s", s)
	}
}
