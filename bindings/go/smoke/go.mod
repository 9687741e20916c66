module wsrt.example/smoke

go 1.19
