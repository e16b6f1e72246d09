package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFlagsAndEnvironment(t *testing.T) {
	cfg, keyFile, _, err := parseFlags(nil, env(map[string]string{"SIM_ADDR": "10.0.0.1:5683", "WS_TOKEN": "tok", "SIM_WS": "ws://x/ws"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "10.0.0.1:5683" || cfg.WSToken != "tok" || cfg.WSURL != "ws://x/ws" || keyFile != "" {
		t.Errorf("env defaults not used: %+v", cfg)
	}
	if cfg.Devices != 10 || cfg.Rate != 10 || cfg.Duration != 10*time.Second || cfg.Count != 0 || cfg.NON {
		t.Errorf("defaults: %+v", cfg)
	}

	cfg, _, _, err = parseFlags(strings.Fields("-addr 127.0.0.1:1 -ws-token flag -count 5 -non -reboot-prob 0"), env(map[string]string{"WS_TOKEN": "env"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:1" || cfg.WSToken != "flag" || cfg.Count != 5 || cfg.Duration != 0 || !cfg.NON || cfg.RebootProb >= 0 {
		t.Errorf("flags: %+v (want -count alone to lift the duration, reboot-prob 0 = never)", cfg)
	}

	cfg, _, _, err = parseFlags(strings.Fields("-count 5 -duration 1s -devices 3 -rate 2 -duration 0"), env(nil), io.Discard)
	if err != nil || cfg.Duration != 0 || cfg.Count != 5 || cfg.Devices != 3 || cfg.Rate != 2 {
		t.Errorf("%+v %v", cfg, err)
	}

	if _, _, _, err := parseFlags([]string{"stray"}, env(nil), io.Discard); err == nil {
		t.Error("a stray argument was accepted")
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-h"}, env(nil), &out, &errOut); code != 0 || !strings.Contains(errOut.String(), "usage:") {
		t.Errorf("-h: exit %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"-rate", "0"}, env(nil), &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "-rate") {
		t.Errorf("-rate 0: exit %d, stderr %q", code, errOut.String())
	}
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("DEV-1 zz\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if code := run([]string{"-dtls-key-file", keys}, env(nil), &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "line 1") {
		t.Errorf("bad key file: exit %d, stderr %q", code, errOut.String())
	}
}
