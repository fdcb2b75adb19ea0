// Package pb holds the generated Go code for the openOBD protocol subset in
// openobd.proto. The generated files are committed, so a build needs no
// protoc; to regenerate (protoc 3.21+, protoc-gen-go v1.36.12,
// protoc-gen-go-grpc v1.5.1 on PATH):
//
//	go generate ./openobd/pb
package pb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative openobd.proto
