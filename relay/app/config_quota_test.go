package app_test

import (
	"strings"
	"testing"

	"github.com/nbiot-live/nbiot-live/relay/app"
)

func TestQuotaAndMetricsConfig(t *testing.T) {
	base := map[string]string{"UPSTREAM_TOKEN": wsToken, "AUTH_DISABLED": "true"}
	from := func(extra map[string]string) (app.Config, error) {
		return app.FromEnv(func(k string) string {
			if v, ok := extra[k]; ok {
				return v
			}
			return base[k]
		})
	}
	c, err := from(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MetricsAddr != "127.0.0.1:9091" || c.MetricsAddrSet || c.TrustedProxyHeader != "" {
		t.Errorf("defaults: METRICS_ADDR %q (set %v), TRUSTED_PROXY_HEADER %q", c.MetricsAddr, c.MetricsAddrSet, c.TrustedProxyHeader)
	}
	q := c.Quotas
	if q.UserConnections != 20 || q.UserDevices != 10 || q.IPConnections != 200 || q.IPDevices != 100 || q.UserChecksPerMinute != 60 || q.IPChecksPerMinute != 300 {
		t.Errorf("quota defaults %+v", q)
	}
	c, err = from(map[string]string{"MAX_CONNECTIONS_PER_USER": "3", "TRUSTED_PROXY_HEADER": "Fly-Client-IP", "METRICS_ADDR": "off"})
	if err != nil || c.Quotas.UserConnections != 3 || c.TrustedProxyHeader != "Fly-Client-IP" || c.MetricsAddr != "off" {
		t.Errorf("set: %+v %v", c.Quotas, err)
	}
	for env, want := range map[string]string{
		"TRUSTED_PROXY_HEADER=X-Forwarded-For": "TRUSTED_PROXY_HEADER",
		"METRICS_ADDR=:8090":                   "METRICS_ADDR", // = HTTP_ADDR's default
		"METRICS_ADDR=nonsense":                "METRICS_ADDR",
		"MAX_DEVICES_PER_USER=0":               "MAX_DEVICES_PER_USER",
	} {
		k, v, _ := strings.Cut(env, "=")
		if _, err := from(map[string]string{k: v}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want one naming %s", env, err, want)
		}
	}
}
