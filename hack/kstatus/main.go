// Command kstatus prints what the kstatus library, the one Flux and the cli-utils applier use
// to judge a resource's health, computes for each object it reads: JSON objects (or Lists of
// them) on standard input, one JSON line out per object. The project's tests use it to check
// AppIdentity status against kstatus itself rather than against a re-implementation.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func judge(obj map[string]any, out *json.Encoder) error {
	if items, ok := obj["items"].([]any); ok {
		for _, item := range items {
			m, ok := item.(map[string]any)
			if !ok {
				return fmt.Errorf("a List item is not an object")
			}
			if err := judge(m, out); err != nil {
				return err
			}
		}
		return nil
	}
	u := &unstructured.Unstructured{Object: obj}
	res, err := status.Compute(u)
	if err != nil {
		return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return out.Encode(verdict{u.GetKind(), u.GetNamespace(), u.GetName(), res.Status.String(), res.Message})
}

func main() {
	in := json.NewDecoder(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for {
		var raw json.RawMessage
		err := in.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return
		}
		var obj map[string]any
		if err == nil {
			// Numbers as int64 where they are integers, as unstructured objects hold them.
			err = utiljson.Unmarshal(raw, &obj)
		}
		if err == nil {
			err = judge(obj, out)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
	}
}
