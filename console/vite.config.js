// Builds the console into dist/ with fixed file names (index.html, app.js,
// app.css): the server embeds exactly these (src/api/http/console.rs), so no
// content hashes, one script, one style sheet, nothing inline (the server's
// Content-Security-Policy is default-src 'self').
import { defineConfig } from "vite";

export default defineConfig({
  base: "/console/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2020",
    cssCodeSplit: false,
    modulePreload: false,
    assetsInlineLimit: 0,
    reportCompressedSize: false,
    rollupOptions: {
      output: {
        entryFileNames: "app.js",
        chunkFileNames: "app-[name].js",
        assetFileNames: (asset) => (asset.names?.some((n) => n.endsWith(".css")) ? "app.css" : "[name][extname]"),
        inlineDynamicImports: true,
      },
    },
  },
});
