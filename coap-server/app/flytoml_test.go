package app_test

// The deployment files cannot be deployed from here (no Fly account, no
// Docker engine), so these tests check what can go wrong without noticing:
// a port or protocol mismatch, UDP not bound on fly-global-services, an env
// name coap-server never reads, secrets the comment calls optional that the
// configuration requires (or the reverse), a JetStream store off the volume,
// a kill timeout shorter than the drain, a Dockerfile building a path that
// is not a static main package.

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/nbiot-live/nbiot-live/coap-server/app"
	"github.com/nbiot-live/nbiot-live/coap-server/stream"
)

const repoRoot = "../.."

// flyConfig is the part of fly.toml's schema the checks need.
type flyConfig struct {
	App         string            `toml:"app"`
	KillSignal  string            `toml:"kill_signal"`
	KillTimeout string            `toml:"kill_timeout"`
	Env         map[string]string `toml:"env"`
	Mounts      struct {
		Source      string `toml:"source"`
		Destination string `toml:"destination"`
		InitialSize string `toml:"initial_size"`
	} `toml:"mounts"`
	Build struct {
		Dockerfile string `toml:"dockerfile"`
	} `toml:"build"`
	Metrics struct {
		Port int    `toml:"port"`
		Path string `toml:"path"`
	} `toml:"metrics"`
	Services []struct {
		Protocol         string `toml:"protocol"`
		InternalPort     int    `toml:"internal_port"`
		AutoStopMachines string `toml:"auto_stop_machines"`
		MinRunning       int    `toml:"min_machines_running"`
		Ports            []struct {
			Port       int      `toml:"port"`
			Handlers   []string `toml:"handlers"`
			ForceHTTPS bool     `toml:"force_https"`
		} `toml:"ports"`
		HTTPChecks []struct {
			Path   string `toml:"path"`
			Method string `toml:"method"`
		} `toml:"http_checks"`
	} `toml:"services"`
}

func loadFly(t *testing.T) (flyConfig, string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "fly.toml"))
	if err != nil {
		t.Fatal(err)
	}
	var fc flyConfig
	if _, err := toml.Decode(string(raw), &fc); err != nil {
		t.Fatalf("fly.toml: %v", err)
	}
	return fc, string(raw)
}

// secretLine is one line of fly.toml's "Secrets" comment block:
// "#   NAME   what it is", two or more spaces apart.
var secretLine = regexp.MustCompile(`^#\s{3}([A-Z][A-Z0-9_]+)\s{2,}(.*)$`)

// secretNames are the names listed in fly.toml's "Secrets" comment block.
func secretNames(raw string) []string {
	var names []string
	sc := bufio.NewScanner(strings.NewReader(raw))
	for sc.Scan() {
		if m := secretLine.FindStringSubmatch(sc.Text()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// secretClaims is what the Secrets comment says a deploy needs: the
// secrets whose text starts "required:", and groups of alternatives whose
// text starts "storage NAME:" (one whole group is needed). Every other
// listed secret is claimed optional.
type secretClaims struct {
	required []string
	groups   map[string][]string
	optional []string
}

func parseSecretClaims(raw string) secretClaims {
	c := secretClaims{groups: map[string][]string{}}
	group := regexp.MustCompile(`^storage (\w+):`)
	sc := bufio.NewScanner(strings.NewReader(raw))
	for sc.Scan() {
		m := secretLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		name, text := m[1], m[2]
		switch g := group.FindStringSubmatch(text); {
		case strings.HasPrefix(text, "required:"):
			c.required = append(c.required, name)
		case g != nil:
			c.groups[g[1]] = append(c.groups[g[1]], name)
		default:
			c.optional = append(c.optional, name)
		}
	}
	return c
}

// placeholders are valid values for the secrets, for FromEnv.
var placeholders = map[string]string{
	"WS_TOKEN":             "placeholder-token-0123456789",
	"DATABASE_URL":         "postgresql://u:p@db.example.com:5432/postgres",
	"SUPABASE_URL":         "https://project.supabase.co",
	"SUPABASE_SERVICE_KEY": "sb_secret_placeholder",
	"NATS_URL":             "nats://nats.example.com:4222",
}

// readNames calls FromEnv with fly.toml's env and placeholder secrets and
// records every name it asks for, so branches taken only in production
// (CoAPS on, storage set) are asked too.
func readNames(t *testing.T, env map[string]string, secrets []string) (map[string]bool, error) {
	t.Helper()
	values := map[string]string{}
	for k, v := range env {
		values[k] = v
	}
	for _, s := range secrets {
		if v, ok := placeholders[s]; ok {
			values[s] = v
		}
	}
	asked := map[string]bool{}
	_, err := app.FromEnv(func(k string) string {
		asked[k] = true
		return values[k]
	})
	return asked, err
}

// runtimeEnv are [env] names the Go runtime reads, not FromEnv.
var runtimeEnv = []string{"GOMEMLIMIT", "GOGC"}

// GOMEMLIMIT is set, parses as the runtime reads it (a number with an
// optional B, KiB, MiB or GiB) and leaves room under the VM's memory.
func TestFlyTOMLMemoryLimitFitsTheVM(t *testing.T) {
	fc, raw := loadFly(t)
	v, ok := fc.Env["GOMEMLIMIT"]
	if !ok {
		t.Fatal("fly.toml [env] sets no GOMEMLIMIT: the byte bounds would be shares of the reference 512 MB, not of what the VM has")
	}
	m := regexp.MustCompile(`^(\d+)(B|KiB|MiB|GiB)?$`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("GOMEMLIMIT=%q is not a size the Go runtime reads", v)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	limit := n << map[string]int{"": 0, "B": 0, "KiB": 10, "MiB": 20, "GiB": 30}[m[2]]
	vm := regexp.MustCompile(`(?m)^\s*memory\s*=\s*"(\d+)mb"`).FindStringSubmatch(raw)
	if vm == nil {
		t.Fatal("fly.toml has no [[vm]] memory = \"<n>mb\"")
	}
	mb, _ := strconv.ParseInt(vm[1], 10, 64)
	if vmBytes := mb << 20; limit > vmBytes*85/100 {
		t.Errorf("GOMEMLIMIT %s is %d%% of the VM's %s: leave 15%% for the kernel and the file cache", v, 100*limit/vmBytes, vm[1]+"mb")
	}
}

func TestFlyTOMLEnvAndSecretsAreRead(t *testing.T) {
	fc, raw := loadFly(t)
	secrets := secretNames(raw)
	for _, want := range []string{"WS_TOKEN", "SUPABASE_URL", "SUPABASE_SERVICE_KEY", "DATABASE_URL"} {
		if !slices.Contains(secrets, want) {
			t.Errorf("secret %s is not listed in fly.toml's comments", want)
		}
	}
	asked, err := readNames(t, fc.Env, secrets)
	if err != nil {
		t.Fatalf("FromEnv with fly.toml's env and the secrets: %v", err)
	}
	for k := range fc.Env {
		if !asked[k] && !slices.Contains(runtimeEnv, k) {
			t.Errorf("[env] sets %s, which coap-server's FromEnv never reads (nor the Go runtime)", k)
		}
	}
	for _, s := range secrets {
		if !asked[s] {
			t.Errorf("secret %s is listed but coap-server's FromEnv never reads it", s)
		}
		if _, ok := fc.Env[s]; ok {
			t.Errorf("secret %s must not be in [env] (it would be committed)", s)
		}
	}
}

// fromFlyEnv runs coap-server's real configuration check, FromEnv, on
// fly.toml's [env] plus placeholder values for the given secrets: what a
// machine started with only those secrets set would do.
func fromFlyEnv(t *testing.T, env map[string]string, secrets []string) error {
	t.Helper()
	_, err := readNames(t, env, secrets)
	return err
}

// TestFlyTOMLSecretsClaims holds fly.toml's Secrets comment to what
// coap-server's configuration check does with fly.toml's [env]: the
// required secrets plus any one storage group start it, leaving out any of
// them stops it, and a secret the comment calls optional is not needed. It
// caught the comment that called storage optional while [env] sets
// COAPS_ADDR, with which coap-server refuses to start without storage.
func TestFlyTOMLSecretsClaims(t *testing.T) {
	fc, raw := loadFly(t)
	c := parseSecretClaims(raw)
	if len(c.required) == 0 {
		t.Fatal("fly.toml's Secrets comment marks no secret \"required:\"")
	}
	err := fromFlyEnv(t, fc.Env, c.required)
	if len(c.groups) == 0 {
		if err != nil {
			t.Fatalf("fly.toml's comment says only %v are required (the rest optional), but with [env] and those coap-server refuses to start: %v", c.required, err)
		}
	} else if err == nil {
		t.Errorf("fly.toml's comment says a storage group is needed, but coap-server starts with only %v: call storage optional", c.required)
	}
	sufficient := map[string][]string{}
	for name, g := range c.groups {
		sufficient["storage "+name] = append(slices.Clone(c.required), g...)
	}
	if len(c.groups) == 0 {
		sufficient["required"] = c.required
	}
	for what, set := range sufficient {
		if err := fromFlyEnv(t, fc.Env, set); err != nil {
			t.Errorf("%s: with [env] and %v coap-server refuses to start: %v", what, set, err)
			continue
		}
		for _, s := range set {
			without := slices.DeleteFunc(slices.Clone(set), func(x string) bool { return x == s })
			if fromFlyEnv(t, fc.Env, without) == nil {
				t.Errorf("%s: the comment says %s is needed, but coap-server starts without it", what, s)
			}
		}
		for _, o := range c.optional {
			if err := fromFlyEnv(t, fc.Env, append(slices.Clone(set), o)); err != nil {
				t.Errorf("%s plus the optional %s: coap-server refuses to start: %v", what, o, err)
			}
		}
	}
}

// TestFlyTOMLDataOnVolume: the embedded JetStream store holds accepted
// uplinks not yet in the database; off the volume, a restart or deploy
// would lose them. The volume the README tells users to create must be the
// one mounted, and big enough for the streams' bounds.
func TestFlyTOMLDataOnVolume(t *testing.T) {
	fc, _ := loadFly(t)
	dataDir := fc.Env["DATA_DIR"]
	if dataDir == "" {
		t.Fatalf("[env] sets no DATA_DIR: the JetStream store would be %s, on the machine's ephemeral disk", stream.DefaultDataDir)
	}
	m := fc.Mounts
	if m.Source == "" || m.Destination == "" {
		t.Fatalf("no [mounts] with source and destination: DATA_DIR=%s would be on the ephemeral disk", dataDir)
	}
	if rel, err := filepath.Rel(m.Destination, dataDir); err != nil || strings.HasPrefix(rel, "..") {
		t.Errorf("DATA_DIR=%s is not on the volume mounted at %s", dataDir, m.Destination)
	}
	readme, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	sz := regexp.MustCompile(`fly volumes create ` + regexp.QuoteMeta(m.Source) + ` --size (\d+)`).FindSubmatch(readme)
	if sz == nil {
		t.Fatalf("README.md has no `fly volumes create %s --size N` (the volume fly.toml mounts)", m.Source)
	}
	need := int64(stream.DefaultUplinksBytes + stream.DefaultLiveBytes)
	for name, def := range map[string]string{"UPLINKS_MAX_BYTES": "", "LIVELOG_MAX_BYTES": ""} {
		if v, ok := fc.Env[name]; ok && v != def {
			t.Fatalf("[env] sets %s: update this test to add it up", name)
		}
	}
	gb, _ := strconv.ParseInt(string(sz[1]), 10, 64)
	if gb*1e9 < need {
		t.Errorf("the README's volume (%d GB) is smaller than the streams' bounds (%d bytes)", gb, need)
	}
	init, ok := strings.CutSuffix(strings.ToLower(m.InitialSize), "gb")
	if n, err := strconv.ParseInt(init, 10, 64); !ok || err != nil || n*1e9 < need {
		t.Errorf("[mounts] initial_size=%q: want N\"gb\" of at least %d bytes", m.InitialSize, need)
	}
}

func TestFlyTOMLServices(t *testing.T) {
	fc, _ := loadFly(t)
	bound := map[string]string{"COAP_ADDR": "udp", "COAPS_ADDR": "udp", "HTTP_ADDR": "tcp"}
	for name, proto := range bound {
		addr := fc.Env[name]
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s=%q: %v", name, addr, err)
			continue
		}
		port, _ := strconv.Atoi(portStr)
		if proto == "udp" && host != "fly-global-services" {
			t.Errorf("%s=%q: UDP must bind fly-global-services (replies from 0.0.0.0 leave from the wrong address)", name, addr)
		}
		if proto == "tcp" && host != "" && host != "0.0.0.0" && host != "[::]" && host != "::" {
			t.Errorf("%s=%q: TCP must bind every address", name, addr)
		}
		found := false
		for _, s := range fc.Services {
			if s.Protocol != proto || s.InternalPort != port {
				continue
			}
			found = true
			if s.AutoStopMachines != "off" {
				t.Errorf("%s service: auto_stop_machines=%q, want \"off\" (the proxy does not wake machines for UDP)", name, s.AutoStopMachines)
			}
			if s.MinRunning < 1 {
				t.Errorf("%s service: min_machines_running=%d, want ≥ 1", name, s.MinRunning)
			}
			if proto == "udp" {
				if len(s.Ports) != 1 || s.Ports[0].Port != port {
					t.Errorf("%s service: external ports %+v, want exactly %d (UDP internal port = external)", name, s.Ports, port)
				}
				continue
			}
			var tls bool
			for _, p := range s.Ports {
				if p.Port == 443 && slices.Contains(p.Handlers, "tls") && slices.Contains(p.Handlers, "http") {
					tls = true
				}
				if p.Port == 80 && !p.ForceHTTPS {
					t.Errorf("port 80 must redirect to https: the relay's WS_TOKEN would cross in clear")
				}
			}
			if !tls {
				t.Errorf("%s service: no port 443 with handlers tls+http", name)
			}
			if len(s.HTTPChecks) == 0 || s.HTTPChecks[0].Path != "/healthz" {
				t.Errorf("%s service: want an http check on /healthz, got %+v", name, s.HTTPChecks)
			}
		}
		if !found {
			t.Errorf("%s=%q: no [[services]] with protocol %s and internal_port %d", name, addr, proto, port)
		}
	}
	for _, s := range fc.Services {
		if s.Protocol != "udp" && s.Protocol != "tcp" {
			t.Errorf("service protocol %q", s.Protocol)
		}
	}
}

func TestFlyTOMLShutdownCoversDrain(t *testing.T) {
	fc, _ := loadFly(t)
	if fc.KillSignal != "SIGTERM" {
		t.Errorf("kill_signal=%q: coap-server drains on SIGTERM", fc.KillSignal)
	}
	kill, err := time.ParseDuration(fc.KillTimeout)
	if err != nil {
		t.Fatalf("kill_timeout=%q: %v", fc.KillTimeout, err)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot, "coap-server", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`drainTimeout\s*=\s*(\d+)\s*\*\s*time\.Second`).FindSubmatch(src)
	if m == nil {
		t.Fatal("coap-server/main.go: drainTimeout = N * time.Second not found; update this test with main.go")
	}
	n, _ := strconv.Atoi(string(m[1]))
	drain := time.Duration(n) * time.Second
	if kill < drain+2*time.Second {
		t.Errorf("kill_timeout %v leaves no margin over the %v drain: queued uplinks would be lost on deploy", kill, drain)
	}
}

// TestDockerfiles checks that each Dockerfile builds a main package that
// compiles without cgo (the base image has no libc) and runs as non-root.
func TestDockerfiles(t *testing.T) {
	fc, _ := loadFly(t)
	if fc.Build.Dockerfile != "coap-server/Dockerfile" {
		t.Errorf("fly.toml [build] dockerfile=%q", fc.Build.Dockerfile)
	}
	buildRe := regexp.MustCompile(`CGO_ENABLED=0 go build .* -o (\S+) (\./\S+)`)
	for _, df := range []string{"coap-server/Dockerfile", "relay/Dockerfile"} {
		t.Run(df, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(repoRoot, df))
			if err != nil {
				t.Fatal(err)
			}
			s := string(raw)
			m := buildRe.FindStringSubmatch(s)
			if m == nil {
				t.Fatal("no `CGO_ENABLED=0 go build … -o OUT ./PKG` line")
			}
			if !regexp.MustCompile(`(?m)^USER nonroot`).MatchString(s) {
				t.Error("the final stage must run as nonroot")
			}
			if !strings.Contains(s, "COPY --from=build "+m[1]+" ") {
				t.Errorf("the final stage does not copy %s", m[1])
			}
			// A replace directive pointing into the repository (the patched
			// pion) must be in the build context before go mod download.
			gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
			if err != nil {
				t.Fatal(err)
			}
			download := strings.Index(s, "RUN go mod download")
			for _, r := range regexp.MustCompile(`=>\s+\./(\S+)`).FindAllStringSubmatch(string(gomod), -1) {
				top := strings.SplitN(r[1], "/", 2)[0]
				copyLine := regexp.MustCompile(`(?m)^COPY ` + regexp.QuoteMeta(top) + `\s`).FindStringIndex(s)
				if copyLine == nil || download >= 0 && copyLine[0] > download {
					t.Errorf("go.mod replaces a module with ./%s, which is not copied before `RUN go mod download`", r[1])
				}
			}
			if _, err := os.Stat(filepath.Join(repoRoot, m[2], "main.go")); err != nil {
				t.Fatalf("%s: %v", m[2], err)
			}
			cmd := exec.Command("go", "build", "-o", os.DevNull, m[2])
			cmd.Dir = repoRoot
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("CGO_ENABLED=0 go build %s: %v\n%s", m[2], err, out)
			}
		})
	}
}

// TestFlyTOMLMetricsPrivate: /metrics is scraped by Fly on METRICS_ADDR's
// port, which is not HTTP_ADDR's and which no [[services]] entry exposes
// through the public proxy. It caught [metrics] on 8080, the public port.
func TestFlyTOMLMetricsPrivate(t *testing.T) {
	fc, _ := loadFly(t)
	addr, ok := fc.Env["METRICS_ADDR"]
	if !ok {
		t.Fatalf("[env] sets no METRICS_ADDR: the default %s is loopback, out of Fly's scraper's reach", app.DefaultMetricsAddr)
	}
	_, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("METRICS_ADDR=%q: %v", addr, err)
	}
	port, _ := strconv.Atoi(portStr)
	if fc.Metrics.Port != port || fc.Metrics.Path != "/metrics" {
		t.Errorf("[metrics] port=%d path=%q, want port %d (METRICS_ADDR) and /metrics", fc.Metrics.Port, fc.Metrics.Path, port)
	}
	if _, httpPort, _ := net.SplitHostPort(fc.Env["HTTP_ADDR"]); httpPort == portStr {
		t.Errorf("METRICS_ADDR and HTTP_ADDR share port %s: /metrics would be public", portStr)
	}
	for _, s := range fc.Services {
		if s.InternalPort == port {
			t.Errorf("a %s [[services]] entry exposes the metrics port %d through the public proxy", s.Protocol, port)
		}
	}
}
