// Command kube-apiserver for prewarm's test control plane: the same entry point as
// k8s.io/kubernetes/cmd/kube-apiserver at the release pinned in go.mod, built here because Go
// cannot `go install` a module whose go.mod has replace directives (k8s.io/kubernetes has them).
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	os.Exit(cli.Run(command))
}
