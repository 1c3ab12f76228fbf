package testenv

// BootMessage is what the boot sector of a disk prints.
func BootMessage(target string) string { return "FERRY BOOTED FROM " + target }

// BootSector is a 512-byte master boot record that a BIOS boots: 16-bit
// real-mode code that writes msg and a line break to the first serial
// port (0x3f8) over and over, a short busy wait apart, so whoever opens
// the console later still reads it. It stands in for an operating system
// in tests that must show which disk a VM booted from.
func BootSector(msg string) []byte {
	code := []byte{
		0xFA,       // cli
		0x31, 0xC0, // xor ax, ax
		0x8E, 0xD8, // mov ds, ax
		0xFC,             // cld
		0xBA, 0xF8, 0x03, // mov dx, 0x3f8
		0xBE, 0x21, 0x7C, // 0x09: mov si, 0x7c21 (the message)
		0xAC,       // 0x0c: lodsb
		0x08, 0xC0, // or al, al
		0x74, 0x03, // jz 0x14
		0xEE,       // out dx, al
		0xEB, 0xF8, // jmp 0x0c
		0xBB, 0x40, 0x00, // 0x14: mov bx, 0x40
		0xB9, 0xFF, 0xFF, // 0x17: mov cx, 0xffff
		0xE2, 0xFE, // 0x1a: loop 0x1a
		0x4B,       // dec bx
		0x75, 0xF8, // jnz 0x17
		0xEB, 0xE8, // jmp 0x09
	}
	if len(code) != 0x21 {
		panic("boot sector code is not 0x21 bytes")
	}
	b := make([]byte, 512)
	n := copy(b, code)
	copy(b[n:446], msg+"\r\n\x00") // stops before the partition table
	b[510], b[511] = 0x55, 0xAA
	return b
}
