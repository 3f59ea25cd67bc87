/**
 * Fails the import of Fulcrum on a Node.js older than the one it is built and tested for, with a
 * message that says what to install. src/index.ts imports it first, so it runs before any other module.
 */

/** The oldest Node.js major version Fulcrum runs on (package.json `engines`; bin/fulcrum.js checks the same). */
export const minimumNodeMajor = 24;

if (Number(process.versions.node.split('.')[0]) < minimumNodeMajor) {
  throw Object.assign(
    new Error(`Fulcrum needs Node.js ${minimumNodeMajor} or later; you have ${process.version}: install Node.js ${minimumNodeMajor} (https://nodejs.org/en/download, or \`nvm install ${minimumNodeMajor}\`)`),
    { code: 'ERR_FULCRUM_NODE_VERSION' },
  );
}
